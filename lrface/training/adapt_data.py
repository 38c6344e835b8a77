"""The training set of the teacher-based adaption (`lrface.training.train_adapt`), built once and cached.

    python -m lrface.training.adapt_data --hr ../shared/data/hr-train --unlabeled ../shared/data/unlabeled-hr \
        --synth runs/synth-hr-train --synth runs/synth-unlabeled-hr --out runs/adapt-data [--threads 2]

Sources are the aligned HR faces of `--hr` (folder per identity: labelled) and of `--unlabeled` (no identities;
faces whose `filled_fraction` in its images.csv exceeds `--max-fill` are left out: UTKFace's tight chips had to be
filled by replicating the border). For every source the bundle holds one LR version of each kind, all at the
same native height (the MR-GAN variant's), brought to the 112x96 canvas by the inference core's one resize path
(`lrface.core.face.to_canvas`) exactly as `lrface embed` / `lrface eval` do with a real capture:

- `mrgan`:    `<synth>/<rel without extension>_0.png`, written by `lrface augment SRC SYNTH --variants 1 --seed 0`
              with the shipped `mrgan.onnx`;
- `bicubic`:  bicubic downsampling of the HR face (`lrface.training.degradations.bicubic_lr`);
- `handmade`: blur -> bicubic -> noise -> JPEG (`lrface.training.degradations.blur_noise_jpeg_lr`, per-file seeds).

The frozen teacher (dlib's ResNet through the fixed chip warp, `lrface.models.dlib_resnet.DlibFaceModel`) embeds every
HR source and every LR version once: `teacher_hr.npy` is the feature supervision's target, `teacher_<kind>.npy`
the HR branch's feature of that LR input (what the translation gate reads). Arrays are plain .npy files in
--out (opened memory-mapped by the trainer, so parallel runs share one copy in the page cache).
"""
from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from lrface.models.dlib_resnet import DlibFaceModel
from lrface.core.face import read_image, to_canvas
from lrface.core.files import list_images
from lrface.training.data import load_face_folder
from lrface.training.degradations import bicubic_lr, blur_noise_jpeg_lr, file_rng

LR_KINDS = ("mrgan", "bicubic", "handmade")


def unlabeled_files(root: Path, max_fill: float) -> list[Path]:
    """Faces of a flat unlabeled folder, without those whose filled share of the canvas exceeds max_fill."""
    fill = {}
    csv_path = root / "images.csv"
    if csv_path.exists():
        with open(csv_path, newline="") as f:
            for row in csv.DictReader(f):
                name = row.get("file") or row.get("path") or row.get("name") or next(iter(row.values()))
                fill[Path(name).name] = float(row.get("filled_fraction") or 0.0)
    return [p for p in list_images(root) if fill.get(p.name, 0.0) <= max_fill]


def _load_canvas(path: Path) -> tuple[np.ndarray, int]:
    rgb = read_image(path)
    return to_canvas(rgb), rgb.shape[0]


def embed_teacher(teacher: torch.nn.Module, images: np.ndarray, batch: int = 64, desc: str = "") -> np.ndarray:
    """uint8 N x 112 x 96 x 3 canvases -> teacher features N x 128 (float32, not normalised)."""
    out = np.empty((len(images), 128), np.float32)
    t0 = time.time()
    with torch.inference_mode():
        for i in range(0, len(images), batch):
            x = torch.from_numpy(np.ascontiguousarray(images[i:i + batch])).permute(0, 3, 1, 2).float()
            out[i:i + batch] = teacher((x - 127.5) / 127.5).numpy()
            if (i // batch) % 50 == 0:
                print(f"adapt-data: teacher {desc} {i + len(x)}/{len(images)} ({(i + len(x)) / (time.time() - t0):.0f}/s)",
                      flush=True)
    return out


def build(hr_dir: str, unlabeled_dir: str | None, synth_dirs: list[str], out: Path, *, max_fill: float = 0.4,
          seed: int = 0, threads: int | None = None) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    hr = load_face_folder(hr_dir)
    images, labels, rels = [hr.images], [hr.labels.astype(np.int64)], [f"hr/{p}" for p in hr.paths]
    roots = {"hr": Path(hr_dir)}
    if unlabeled_dir:
        files = unlabeled_files(Path(unlabeled_dir), max_fill)
        with ThreadPoolExecutor(max_workers=threads or 2) as pool:
            loaded = list(pool.map(_load_canvas, files))
        images.append(np.stack([c for c, _ in loaded]))
        labels.append(np.full(len(files), -1, np.int64))
        rels += [f"unlabeled/{p.relative_to(unlabeled_dir).as_posix()}" for p in files]
        roots["unlabeled"] = Path(unlabeled_dir)
    images_np = np.concatenate(images)
    labels_np = np.concatenate(labels)
    print(f"adapt-data: {len(images_np)} sources ({int((labels_np >= 0).sum())} labelled, "
          f"{int((labels_np < 0).sum())} unlabeled) in {time.time() - t0:.0f}s", flush=True)

    # MR-GAN variants: find each source's `_0` file in one of the synth folders
    synth_roots = [Path(d) for d in synth_dirs]

    def variant_path(rel: str) -> Path:
        part, inner = rel.split("/", 1)
        stem = inner.rsplit(".", 1)[0] + "_0.png"
        for root in synth_roots:
            if (root / stem).exists():
                return root / stem
        raise SystemExit(f"adapt-data: no MR-GAN variant {stem} for {roots[part] / inner} in any --synth folder "
                         f"(run: lrface augment {roots[part]} SYNTH --variants 1 --seed 0)")

    with ThreadPoolExecutor(max_workers=threads or 2) as pool:
        mrgan = list(pool.map(lambda r: _load_canvas(variant_path(r)), rels))
    heights = np.array([h for _, h in mrgan], np.int32)
    lr = {"mrgan": np.stack([c for c, _ in mrgan])}
    del mrgan

    def bicubic(i: int) -> np.ndarray:
        return to_canvas(bicubic_lr(images_np[i], int(heights[i])))

    def handmade(i: int) -> np.ndarray:
        return to_canvas(blur_noise_jpeg_lr(images_np[i], int(heights[i]), file_rng(seed, rels[i])))

    with ThreadPoolExecutor(max_workers=threads or 2) as pool:
        lr["bicubic"] = np.stack(list(pool.map(bicubic, range(len(rels)))))
        lr["handmade"] = np.stack(list(pool.map(handmade, range(len(rels)))))
    print(f"adapt-data: LR versions ready in {time.time() - t0:.0f}s (heights {heights.min()}-{heights.max()})",
          flush=True)

    np.save(out / "hr.npy", images_np)
    np.save(out / "labels.npy", labels_np)
    np.save(out / "heights.npy", heights)
    for kind, arr in lr.items():
        np.save(out / f"lr_{kind}.npy", arr)
    teacher = DlibFaceModel.from_dat()
    np.save(out / "teacher_hr.npy", embed_teacher(teacher, images_np, desc="hr"))
    for kind, arr in lr.items():
        np.save(out / f"teacher_{kind}.npy", embed_teacher(teacher, arr, desc=kind))
    meta = {"sources": len(rels), "labelled": int((labels_np >= 0).sum()), "identities": hr.identities,
            "rels": rels, "max_fill": max_fill, "seed": seed, "synth": [str(d) for d in synth_dirs],
            "seconds": round(time.time() - t0, 1)}
    (out / "meta.json").write_text(json.dumps(meta))
    print(f"adapt-data: done in {meta['seconds']}s -> {out}", flush=True)
    return meta


def add_real(real_dir: str, out: Path) -> dict:
    """Add real LR captures with identities (lr-train) to a bundle: `real_lr.npy` (canvas), `real_labels.npy`,
    `teacher_real.npy`, and `real_identities` in meta.json. They are the target domain itself: Model_LR learns to
    tell their people apart (a margin loss), next to the MR-GAN pairs that tie it to the teacher's HR space."""
    folder = load_face_folder(real_dir)
    np.save(out / "real_lr.npy", folder.images)
    np.save(out / "real_labels.npy", folder.labels.astype(np.int64))
    np.save(out / "teacher_real.npy", embed_teacher(DlibFaceModel.from_dat(), folder.images, desc="real"))
    meta = json.loads((out / "meta.json").read_text())
    meta.update({"real_identities": folder.identities, "real": str(real_dir)})
    (out / "meta.json").write_text(json.dumps(meta))
    print(f"adapt-data: {len(folder)} real LR captures of {len(folder.identities)} identities added", flush=True)
    return meta


def load(out: str | Path) -> dict:
    """The bundle as a dict of (memory-mapped) arrays plus `meta`."""
    out = Path(out)
    if not (out / "meta.json").exists():
        raise SystemExit(f"{out}: not an adaption data folder (no meta.json); build it with python -m lrface.training.adapt_data")
    data = {p.stem: np.load(p, mmap_mode="r") for p in out.glob("*.npy")}
    data["meta"] = json.loads((out / "meta.json").read_text())
    return data


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m lrface.training.adapt_data", description=__doc__.split("\n\n")[0])
    p.add_argument("--hr", required=True, help="aligned HR faces, folder per identity")
    p.add_argument("--unlabeled", help="aligned HR faces without identities (flat folder + images.csv)")
    p.add_argument("--synth", action="append", default=[], help="lrface augment output(s) of the sources (repeat)")
    p.add_argument("--real-lr", help="real LR captures, folder per identity (lr-train): added to the bundle")
    p.add_argument("--out", required=True)
    p.add_argument("--max-fill", type=float, default=0.4, help="leave out unlabeled faces filled beyond this share")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if not (Path(args.out) / "meta.json").exists():
        build(args.hr, args.unlabeled, args.synth, Path(args.out), max_fill=args.max_fill, seed=args.seed,
              threads=args.threads)
    if args.real_lr:
        add_real(args.real_lr, Path(args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
