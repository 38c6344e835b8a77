"""Pack the MR-GAN training data small enough to travel to a lent GPU machine (64 MiB per call, code included).

    python -m lrface.training.pack_gpu_data [--data ../shared/data] [--out .gpudata]

writes OUT/hr-train (4,200 of the 13,859 HR faces, re-encoded as JPEG q85) and OUT/lr-train (all 9,977 real LR
captures, lossless WebP: the target domain is not touched). The HR subset is the one behind the shipped
`mrgan.onnx`: 5,200 faces drawn with seed 2026, of which 1,000 were then dropped with seed 7 to fit the limit.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from PIL import Image


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m lrface.training.pack_gpu_data", description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default="../shared/data")
    p.add_argument("--out", default=".gpudata")
    args = p.parse_args(argv)
    src, dst = Path(args.data), Path(args.out)
    hr = sorted((src / "hr-train").rglob("*.jpg"))
    drawn = [hr[i] for i in sorted(np.random.default_rng(2026).choice(len(hr), 5200, replace=False))]
    dropped = set(np.random.default_rng(7).choice(len(drawn), len(drawn) - 4200, replace=False).tolist())
    for i, path in enumerate(drawn):
        if i in dropped:
            continue
        out = dst / "hr-train" / path.relative_to(src / "hr-train")
        out.parent.mkdir(parents=True, exist_ok=True)
        Image.open(path).convert("RGB").save(out, "JPEG", quality=85)
    n_lr = 0
    for path in sorted((src / "lr-train").rglob("*.png")):
        out = (dst / "lr-train" / path.relative_to(src / "lr-train")).with_suffix(".webp")
        out.parent.mkdir(parents=True, exist_ok=True)
        Image.open(path).convert("RGB").save(out, "WEBP", lossless=True)
        n_lr += 1
    print(f"pack_gpu_data: {len(drawn) - len(dropped)} HR faces and {n_lr} LR captures under {dst}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
