#!/usr/bin/env bash
# Reproduces the shipped models and their baselines end to end (the model cards quote this script).
#
#   lrface/training/reproduce.sh STAGE [STAGE...]     stages, in order: gan emb synth lr ran export
#
#   gan     MR-GAN full model and the five Table 1 ablations, same budget each (run in parallel)
#   emb     Model_HR (HR only) and the HR + bicubic baseline, same budget each (in parallel with gan if
#           both are named: `reproduce.sh gan+emb`)
#   synth   MR-GAN (full) -> ONNX, then `lrface augment` over the HR training folder (the LR training set)
#   lr      Model_LR on the synthesized LR faces
#   ran     Model_MR: feature adaption (Algorithm 2) from Model_HR and Model_LR
#   export  every MR-GAN run and every embedder to ONNX under $RUNS/onnx/
#
# Budgets are wall-clock minutes per run (each trainer also stops at its epoch/step count), so a GPU and a
# CPU give the same recipe at different sizes. Environment (defaults in brackets):
#   HR [../shared/data/hr-train]  LR [../shared/data/lr-train]  RUNS [runs]  DEVICE [auto]
#   GAN_MIN [240]  EMB_MIN [55]  LR_MIN [38]  RAN_MIN [30]  GAN_STEPS [200000]  EMB_EPOCHS [10]
#   RAN_EPOCHS [3]  VARIANTS [1]  SEED [0]  GAN_BATCH [32]  EMB_BATCH [128]  EMB_CONFIG [embedder_fast]
#   ABLATIONS [1]  THREADS [1]  MRGAN_ONNX [unset: export this run's MR-GAN]
# The defaults are the recipe of the shipped embedder on a 2-core CPU (one run per core); on a GPU raise the
# epochs and use EMB_CONFIG=embedder_base (or embedder_iresnet50).
set -euo pipefail
cd "$(dirname "$0")/../.."  # the repository root
HR=${HR:-../shared/data/hr-train}
LR=${LR:-../shared/data/lr-train}
RUNS=${RUNS:-runs}
DEVICE=${DEVICE:-auto}
GAN_MIN=${GAN_MIN:-240}; EMB_MIN=${EMB_MIN:-55}; LR_MIN=${LR_MIN:-38}; RAN_MIN=${RAN_MIN:-30}
GAN_STEPS=${GAN_STEPS:-200000}; EMB_EPOCHS=${EMB_EPOCHS:-10}; RAN_EPOCHS=${RAN_EPOCHS:-3}
VARIANTS=${VARIANTS:-1}; SEED=${SEED:-0}; GAN_BATCH=${GAN_BATCH:-32}; EMB_BATCH=${EMB_BATCH:-128}
EMB_CONFIG=${EMB_CONFIG:-embedder_fast}; THREADS=${THREADS:-1}
[ "$DEVICE" = cuda ] && THREADS_FLAG="" || THREADS_FLAG="--threads $THREADS"
ABLATIONS=${ABLATIONS:-1}
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1
mkdir -p "$RUNS/logs" "$RUNS/onnx"

ABLATION_CONFIGS="mrgan_no_attn_loss mrgan_no_attention mrgan_no_local_gen mrgan_no_local_gen_no_attention mrgan_no_local_gen_no_attention_no_local_disc"

train_gan() {  # $1 = config
  local resume=""; [ -f "$RUNS/$1/last.pt" ] && resume=--resume
  $PY -m lrface.training.train_mrgan --config "$1" --hr "$HR" --lr "$LR" --out "$RUNS/$1" --device "$DEVICE" \
    --steps "$GAN_STEPS" --max-minutes "$GAN_MIN" --batch-size "$GAN_BATCH" --seed "$SEED" $resume $THREADS_FLAG \
    >"$RUNS/logs/$1.log" 2>&1
}
train_emb() {  # $1 = mode (hr | hr_bicubic)
  $PY -m lrface.training.train_embedder --config "$EMB_CONFIG" --mode "$1" --hr "$HR" --out "$RUNS/embedder_$1" \
    --device "$DEVICE" --epochs "$EMB_EPOCHS" --max-minutes "$EMB_MIN" --batch-size "$EMB_BATCH" \
    --seed "$SEED" --resume $THREADS_FLAG >"$RUNS/logs/embedder_$1.log" 2>&1
}

stage_gan() {
  local pids=()
  train_gan mrgan_base & pids+=($!)
  if [ "$ABLATIONS" = 1 ]; then for c in $ABLATION_CONFIGS; do train_gan "$c" & pids+=($!); done; fi
  for p in "${pids[@]}"; do wait "$p"; done
}
stage_emb() {
  local pids=()
  train_emb hr & pids+=($!)
  train_emb hr_bicubic & pids+=($!)
  for p in "${pids[@]}"; do wait "$p"; done
}
stage_synth() {  # MRGAN_ONNX=lrface/models/weights/mrgan.onnx uses the shipped generator instead of this run's
  local gen=${MRGAN_ONNX:-$RUNS/onnx/mrgan.onnx}
  [ -n "${MRGAN_ONNX:-}" ] || $PY -m lrface.training.export "$RUNS/mrgan_base/last.pt" "$gen"
  $PY -m lrface.service.cli augment "$HR" "$RUNS/synth-hr-train" --variants "$VARIANTS" --seed "$SEED" \
    --model "$gen" --canvas $THREADS_FLAG >"$RUNS/logs/synth.log" 2>&1
}
stage_lr() {
  $PY -m lrface.training.train_embedder --config "$EMB_CONFIG" --mode lr --hr "$HR" --lr-dir "$RUNS/synth-hr-train" \
    --out "$RUNS/embedder_lr" --device "$DEVICE" --epochs "$EMB_EPOCHS" --max-minutes "$LR_MIN" \
    --batch-size "$EMB_BATCH" --seed "$SEED" --resume $THREADS_FLAG >"$RUNS/logs/embedder_lr.log" 2>&1
}
stage_ran() {
  $PY -m lrface.training.train_ran --config ran_base --hr "$HR" --lr-dir "$RUNS/synth-hr-train" \
    --hr-ckpt "$RUNS/embedder_hr/last.pt" --lr-ckpt "$RUNS/embedder_lr/last.pt" --out "$RUNS/ran_base" \
    --device "$DEVICE" --epochs "$RAN_EPOCHS" --max-minutes "$RAN_MIN" --batch-size "$EMB_BATCH" \
    --seed "$SEED" --resume $THREADS_FLAG >"$RUNS/logs/ran_base.log" 2>&1
}
stage_export() {
  for c in mrgan_base $ABLATION_CONFIGS; do
    [ -f "$RUNS/$c/last.pt" ] && $PY -m lrface.training.export "$RUNS/$c/last.pt" "$RUNS/onnx/$c.onnx" &
  done
  wait
  for r in embedder_hr embedder_hr_bicubic embedder_lr ran_base; do
    [ -f "$RUNS/$r/last.pt" ] && $PY -m lrface.training.export "$RUNS/$r/last.pt" "$RUNS/onnx/$r.onnx"
  done
  return 0
}

for stage in "$@"; do
  echo "== $(date -u +%H:%M:%S) stage $stage"
  case "$stage" in
    gan) stage_gan ;;
    emb) stage_emb ;;
    gan+emb) stage_gan & g=$!; stage_emb & e=$!; wait $g; wait $e ;;
    synth) stage_synth ;;
    lr) stage_lr ;;
    ran) stage_ran ;;
    export) stage_export ;;
    *) echo "unknown stage $stage" >&2; exit 2 ;;
  esac
done
echo "== $(date -u +%H:%M:%S) done"
