"""Hand-made LR baselines to compare MR-GAN against: bicubic downsampling and blur + noise + JPEG.

BasicSR style: each degradation is a plain function of an RGB uint8 array (and an `np.random.Generator` when it
is random); the pipelines compose them. numpy + Pillow only.

    python -m lrface.training.degradations INPUT_DIR OUTPUT_DIR --method bicubic|blur_noise_jpeg|mrgan \
        (--heights-from dev/images.csv | --height H) [--seed S] [--model mrgan.onnx]

writes OUTPUT_DIR/<relative path without extension>.png. With --heights-from, each face gets the `lr_height`
of its stem (`<identity>/<file name without extension>`), so a baseline has the sizes of the real captures.
`--method mrgan` writes MR-GAN's variant 0 (seed S) at the same sizes through the inference core, so the realism
comparison puts all three generators on exactly the same faces and sizes.
File i's randomness is `np.random.default_rng([S, zlib.crc32(rel_path.encode())])`: independent of order.
"""
from __future__ import annotations

import argparse
import csv
import io
import os
import sys
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

from lrface.core.face import ImageDecodeError, encode_png, lr_width_for_height, read_image, resize_rgb
from lrface.core.files import list_images, write_atomic

# Ranges of the random pipeline. Blur sigma is in HR pixels (before downsampling), noise sigma in 0-255 units
# at the LR size, JPEG quality as Pillow counts it.
BLUR_SIGMA = (0.5, 3.0)
NOISE_SIGMA = (1.0, 10.0)
JPEG_QUALITY = (30, 80)

METHODS = ("bicubic", "blur_noise_jpeg", "mrgan")


def bicubic_lr(rgb: np.ndarray, height: int) -> np.ndarray:
    """Antialiased bicubic downsampling to `height` x `lr_width_for_height(height)` (the classic LR baseline)."""
    return resize_rgb(np.asarray(rgb, dtype=np.uint8), int(height), lr_width_for_height(int(height)))


def gaussian_kernel(sigma: float) -> np.ndarray:
    """Normalised 1-D Gaussian of standard deviation `sigma`, radius ceil(3 sigma)."""
    radius = max(1, int(np.ceil(3.0 * sigma)))
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    k = np.exp(-0.5 * (x / sigma) ** 2)
    return k / k.sum()


def gaussian_blur(rgb: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian blur with reflected borders."""
    if sigma <= 0:
        return rgb
    k = gaussian_kernel(sigma)
    r = len(k) // 2
    x = np.pad(rgb.astype(np.float64), ((r, r), (r, r), (0, 0)), mode="reflect")
    h, w = rgb.shape[:2]
    x = sum(k[i] * x[i:i + h] for i in range(len(k)))  # vertical
    x = sum(k[i] * x[:, i:i + w] for i in range(len(k)))  # horizontal
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


def add_gaussian_noise(rgb: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """Independent Gaussian noise per pixel and channel (sensor noise), sigma in 0-255 units."""
    noisy = rgb.astype(np.float64) + rng.normal(0.0, sigma, size=rgb.shape)
    return np.clip(np.rint(noisy), 0, 255).astype(np.uint8)


def jpeg_compress(rgb: np.ndarray, quality: int) -> np.ndarray:
    """Round-trip through Pillow's JPEG encoder at `quality` (4:2:0 chroma subsampling)."""
    buf = io.BytesIO()
    Image.fromarray(rgb, "RGB").save(buf, format="JPEG", quality=int(quality))
    buf.seek(0)
    return np.asarray(Image.open(buf).convert("RGB"), dtype=np.uint8)


def blur_noise_jpeg_lr(rgb: np.ndarray, height: int, rng: np.random.Generator) -> np.ndarray:
    """Gaussian blur (random sigma) -> bicubic downsampling to `height` -> Gaussian noise (random sigma)
    -> JPEG (random quality). Draws, in order: blur sigma, noise sigma, the noise field, JPEG quality."""
    blur_sigma = rng.uniform(*BLUR_SIGMA)
    noise_sigma = rng.uniform(*NOISE_SIGMA)
    lr = bicubic_lr(gaussian_blur(np.asarray(rgb, dtype=np.uint8), blur_sigma), height)
    lr = add_gaussian_noise(lr, noise_sigma, rng)
    quality = int(rng.integers(JPEG_QUALITY[0], JPEG_QUALITY[1] + 1))
    return jpeg_compress(lr, quality)


def degrade(rgb: np.ndarray, method: str, height: int, rng: np.random.Generator) -> np.ndarray:
    """Apply the named method (one of METHODS)."""
    if method == "bicubic":
        return bicubic_lr(rgb, height)
    if method == "blur_noise_jpeg":
        return blur_noise_jpeg_lr(rgb, height, rng)
    raise ValueError(f"method must be one of {', '.join(METHODS)}, not {method!r}")


def file_rng(seed: int, rel_path: str) -> np.random.Generator:
    """The generator for one file: depends on the run seed and the file's relative path only."""
    return np.random.default_rng([int(seed), zlib.crc32(rel_path.encode("utf-8"))])


def read_heights(csv_path: str | os.PathLike) -> dict[str, int]:
    """stem -> lr_height from a dev-style images.csv (`stem,identity,lr_height,lr_width`)."""
    with open(csv_path, newline="") as f:
        return {row["stem"]: int(row["lr_height"]) for row in csv.DictReader(f)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m lrface.training.degradations",
                                description="Write hand-made LR baselines of every face under INPUT_DIR.")
    p.add_argument("input_dir", metavar="INPUT_DIR")
    p.add_argument("output_dir", metavar="OUTPUT_DIR")
    p.add_argument("--method", choices=METHODS, required=True)
    size = p.add_mutually_exclusive_group(required=True)
    size.add_argument("--heights-from", metavar="CSV", help="dev-style images.csv: each face gets its stem's lr_height")
    size.add_argument("--height", type=int, metavar="H", help="one LR height for every face")
    p.add_argument("--seed", type=int, default=0, metavar="S")
    p.add_argument("--model", help="--method mrgan: the MR-GAN ONNX (default: the shipped one)")
    args = p.parse_args(argv)
    synth = None
    if args.method == "mrgan":
        from lrface.core.synthesizer import Synthesizer

        synth = Synthesizer(args.model)

    from tqdm import tqdm

    input_dir, output_dir = Path(args.input_dir), Path(args.output_dir)
    if not input_dir.is_dir():
        print(f"{p.prog}: error: input folder {input_dir} does not exist", file=sys.stderr)
        return 1
    if args.height is not None and not 8 <= args.height <= 112:
        print(f"{p.prog}: error: --height must be within [8, 112], not {args.height}", file=sys.stderr)
        return 1
    heights = read_heights(args.heights_from) if args.heights_from else None
    skip = output_dir.resolve()
    rels = [q.relative_to(input_dir).as_posix() for q in list_images(input_dir)
            if skip not in q.resolve().parents]
    if not rels:
        print(f"{p.prog}: error: no images under {input_dir}", file=sys.stderr)
        return 1
    written = failed = 0
    for rel in tqdm(rels, unit="face", desc=args.method, file=sys.stderr):
        stem = rel.rsplit(".", 1)[0]
        height = args.height if heights is None else heights.get(stem)
        if height is None:
            tqdm.write(f"{p.prog}: skipping {rel}: its stem {stem!r} is not in {args.heights_from}", file=sys.stderr)
            failed += 1
            continue
        try:
            rgb = read_image(input_dir / rel)
        except (ImageDecodeError, OSError) as exc:
            tqdm.write(f"{p.prog}: cannot read {rel}: {exc}", file=sys.stderr)
            failed += 1
            continue
        if synth is not None:
            lr = synth.synthesize([rgb], keys=[rel], variants=1, seed=args.seed, height=height)[0][0].image
        else:
            lr = degrade(rgb, args.method, height, file_rng(args.seed, rel))
        write_atomic(output_dir / f"{stem}.png", encode_png(lr))
        written += 1
    print(f"{args.method}: {written} written to {output_dir}, {failed} skipped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
