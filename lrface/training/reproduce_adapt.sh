#!/usr/bin/env bash
# Reproduces the shipped embedder (dlib's ResNet adapted to LR faces, lrface.training.train_adapt) and the rows of its
# model card's ablation table (lrface/models/weights/embedder.md quotes this script).
#
#   lrface/training/reproduce_adapt.sh STAGE [STAGE...]     stages, in order: synth data train ablations export eval
#
#   synth      LR faces of hr-train and unlabeled-hr with the shipped MR-GAN (lrface augment, 1 variant, seed 0)
#   data       the training bundle: HR sources, their MR-GAN / bicubic / hand-made LR versions, the real LR captures
#              of lr-train with their identities, and the frozen teacher's embeddings of all of them
#              (python -m lrface.training.adapt_data)
#   train      the shipped embedder's weights: its six ensemble members (configs adapt_handmade_flip_6k,
#              adapt_mix_flip_6k, adapt_handmade_flip_6k_s2, adapt_online_flip_6k, adapt_online_flip_6k_s5,
#              adapt_online_flip_6k_s6: 6,000 updates each, one after the other; STEPS does not apply); the export
#              stage joins all six with the shipped export options (adapt_ens6_online_lrview: ensemble + mirror
#              averaging + an LR view at 32 px + a gate floor; train-adapt --reexport), the first five with the same
#              options (adapt_ens5_online_lrview, the previously shipped file), member 5 alone with those options
#              (adapt_lite_s5_lrview, the shipped lite file), and the first three and first two with and without the
#              test-time options (adapt_ens3_lrview / adapt_ens3_flip, adapt_ens2_lrview / adapt_ens2_flip)
#   ablations  the other rows, same budget (STEPS updates of 32 sources + 8 real captures), two runs at a time
#   export     every run -> $RUNS/onnx/<config>.onnx, plus dlib alone through the chip warp ($RUNS/onnx/dlib.onnx)
#   eval       lrface eval of every ONNX file on the dev split -> $RUNS/eval/metrics_<name>.json
#
# Environment (defaults in brackets): HR [../shared/data/hr-train]  UNLABELED [../shared/data/unlabeled-hr]
#   REAL_LR [../shared/data/lr-train]  DEV [../shared/data/dev]  RUNS [runs]  STEPS [1000]  THREADS [1 per run; two runs share a 2-core CPU]
#   DEVICE [cpu]  MRGAN_ONNX [lrface/models/weights/mrgan.onnx]
# On a GPU: DEVICE=cuda (the runs then go one after the other), and raise STEPS for a longer run.
set -euo pipefail
cd "$(dirname "$0")/../.."  # the repository root
HR=${HR:-../shared/data/hr-train}
UNLABELED=${UNLABELED:-../shared/data/unlabeled-hr}
REAL_LR=${REAL_LR:-../shared/data/lr-train}
DEV=${DEV:-../shared/data/dev}
RUNS=${RUNS:-runs}
STEPS=${STEPS:-1000}
THREADS=${THREADS:-1}
DEVICE=${DEVICE:-cpu}
MRGAN_ONNX=${MRGAN_ONNX:-lrface/models/weights/mrgan.onnx}
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1
mkdir -p "$RUNS/logs" "$RUNS/onnx" "$RUNS/eval"
MEMBERS="adapt_handmade_flip_6k adapt_mix_flip_6k adapt_handmade_flip_6k_s2 adapt_online_flip_6k adapt_online_flip_6k_s5 adapt_online_flip_6k_s6"  # the shipped ensemble's members, in its order
ABLATIONS="adapt_full adapt_lr_mrgan adapt_lr_bicubic adapt_lr_handmade adapt_no_feature adapt_no_unlabeled adapt_no_real adapt_full_handmade adapt_full_mix adapt_full_handmade_real16"

train() {  # $1 = config
  $PY -m lrface.training.train_adapt --config "$1" --data "$RUNS/adapt-data" --out "$RUNS/$1" --steps "$STEPS" \
    --threads "$THREADS" --device "$DEVICE" --resume >"$RUNS/logs/$1.log" 2>&1
}

for stage in "$@"; do
  case "$stage" in
    synth)
      $PY -m lrface.service.cli augment "$HR" "$RUNS/synth-hr-train" --variants 1 --seed 0 --model "$MRGAN_ONNX"
      $PY -m lrface.service.cli augment "$UNLABELED" "$RUNS/synth-unlabeled-hr" --variants 1 --seed 0 --model "$MRGAN_ONNX" ;;
    data)
      $PY -m lrface.training.adapt_data --hr "$HR" --unlabeled "$UNLABELED" --synth "$RUNS/synth-hr-train" \
        --synth "$RUNS/synth-unlabeled-hr" --real-lr "$REAL_LR" --out "$RUNS/adapt-data" ;;
    train)
      for c in $MEMBERS; do
        $PY -m lrface.training.train_adapt --config "$c" --data "$RUNS/adapt-data" --out "$RUNS/$c" --threads 2 \
          --device "$DEVICE" --resume >"$RUNS/logs/$c.log" 2>&1
      done ;;
    ablations)
      set -- $ABLATIONS
      while [ $# -gt 0 ]; do
        if [ "$DEVICE" = cuda ]; then train "$1"; shift; continue; fi
        train "$1" & a=$!
        if [ $# -gt 1 ]; then train "$2" & b=$!; wait "$b"; fi
        wait "$a"; shift; [ $# -gt 0 ] && shift
      done ;;
    export)
      $PY -m lrface.training.train_adapt --export-teacher "$RUNS/onnx/dlib.onnx"
      $PY -m lrface.training.train_adapt --export-teacher "$RUNS/onnx/dlib_centred.onnx" --data "$RUNS/adapt-data"
      for c in $MEMBERS $ABLATIONS; do
        [ -f "$RUNS/$c/last.pt" ] && $PY -m lrface.training.export "$RUNS/$c/last.pt" "$RUNS/onnx/$c.onnx"
      done
      if [ -f "$RUNS/adapt_handmade_flip_6k/last.pt" ]; then  # member 1 alone with the test-time options
        $PY -m lrface.training.train_adapt --reexport "$RUNS/adapt_handmade_flip_6k/last.pt" \
          --config adapt_handmade_6k_lrview --out "$RUNS/onnx/adapt_handmade_6k_lrview.onnx"
      fi
      srcs=() k=0  # the first k members as an ensemble (k = 2, 3, 5, 6), once all their runs exist
      for m in $MEMBERS; do
        [ -f "$RUNS/$m/last.pt" ] || break
        m_last="$RUNS/$m/last.pt"
        srcs+=("$m_last") k=$((k + 1))
        case "$k" in
          2|3) configs="adapt_ens${k}_lrview adapt_ens${k}_flip" ;;
          5) configs="adapt_ens5_online_lrview"  # the previously shipped file, and the lite file: member 5 alone
             $PY -m lrface.training.train_adapt --reexport "$m_last" --config adapt_lite_s5_lrview --out "$RUNS/onnx/adapt_lite_s5_lrview.onnx" ;;
          6) configs="adapt_ens6_online_lrview" ;;  # the shipped file
          *) continue ;;
        esac
        for c in $configs; do
          $PY -m lrface.training.train_adapt --reexport "${srcs[@]}" --config "$c" --out "$RUNS/onnx/$c.onnx"
        done
      done ;;
    eval)
      for f in "$RUNS"/onnx/dlib.onnx "$RUNS"/onnx/dlib_centred.onnx "$RUNS"/onnx/adapt_*.onnx; do
        [ -f "$f" ] && $PY -m lrface.service.cli eval --data "$DEV" --model "$f" --out "$RUNS/eval" --name "$(basename "$f" .onnx)"
      done ;;
    *) echo "unknown stage $stage (synth data train ablations export eval)" >&2; exit 2 ;;
  esac
done
