"""Face folders for training: folder-per-identity scanning and loading into uint8 arrays.

Both training algorithms load whole folders into memory (the shipped datasets are ~14k faces, ~0.5 GB as
uint8 at 112x96) so that a GPU run can keep every image on the device and a CPU run never waits on decoding.
A loaded folder is cached as .npz next to the run directory (`cache_dir`), keyed by folder path and mtime.
"""
from __future__ import annotations

import hashlib
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lrface.core.face import FACE_HEIGHT, FACE_WIDTH, ImageDecodeError, read_image, to_canvas
from lrface.core.files import list_images


@dataclass
class FaceFolder:
    """A loaded folder of faces: canvas images, identity labels and each file's native size."""

    images: np.ndarray  # N x 112 x 96 x 3 uint8, every face resized to the canvas
    labels: np.ndarray  # N int64, index into `identities`
    identities: list[str]
    native_heights: np.ndarray  # N int32, height of the file before resizing to the canvas
    paths: list[str]  # relative to the folder root, '/'-separated

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def num_classes(self) -> int:
        return len(self.identities)


def _load_one(path: Path) -> tuple[np.ndarray, int] | None:
    try:
        rgb = read_image(path)
    except (ImageDecodeError, OSError):
        return None
    return to_canvas(rgb), rgb.shape[0]


def _cache_key(root: Path, paths: list[Path]) -> str:
    h = hashlib.sha1(str(root.resolve()).encode())
    h.update(str(len(paths)).encode())
    for p in paths[:: max(1, len(paths) // 64)]:
        h.update(p.as_posix().encode())
        h.update(str(p.stat().st_mtime_ns).encode())
    return h.hexdigest()[:16]


def load_face_folder(root: str | os.PathLike, *, cache_dir: str | os.PathLike | None = None,
                     limit: int | None = None, workers: int = 8) -> FaceFolder:
    """Load `root/<identity>/<image>` (any depth below the identity folder, any image size).

    Files directly under root get the identity "" (an unlabeled pool, as for LR captures). Unreadable
    files are skipped. With `limit`, only the first `limit` files (in sorted order) are read.
    """
    root = Path(root)
    paths = list_images(root)
    if limit is not None:
        paths = paths[:limit]
    if not paths:
        raise FileNotFoundError(f"no images under {root}")
    cache_file = None
    if cache_dir is not None:
        Path(cache_dir).mkdir(parents=True, exist_ok=True)
        cache_file = Path(cache_dir) / f"faces-{root.name}-{_cache_key(root, paths)}.npz"
        if cache_file.exists():
            z = np.load(cache_file, allow_pickle=False)
            # plain str, not numpy.str_: identities end up in checkpoints, which load with weights_only=True
            return FaceFolder(z["images"], z["labels"], [str(i) for i in z["identities"]], z["native_heights"],
                              [str(p) for p in z["paths"]])
    with ThreadPoolExecutor(max_workers=workers) as pool:
        loaded = list(pool.map(_load_one, paths))
    keep = [(p, r) for p, r in zip(paths, loaded) if r is not None]
    if not keep:
        raise FileNotFoundError(f"no readable images under {root}")
    rel = [p.relative_to(root).as_posix() for p, _ in keep]
    idents = [r.split("/")[0] if "/" in r else "" for r in rel]
    identities = sorted(set(idents))
    index = {name: i for i, name in enumerate(identities)}
    images = np.stack([r[0] for _, r in keep]).astype(np.uint8)
    assert images.shape[1:] == (FACE_HEIGHT, FACE_WIDTH, 3)
    folder = FaceFolder(
        images=images,
        labels=np.array([index[i] for i in idents], dtype=np.int64),
        identities=identities,
        native_heights=np.array([r[1] for _, r in keep], dtype=np.int32),
        paths=rel,
    )
    if cache_file is not None:
        tmp = cache_file.with_suffix(".tmp.npz")
        np.savez(tmp, images=folder.images, labels=folder.labels, identities=np.array(identities),
                 native_heights=folder.native_heights, paths=np.array(rel))
        os.replace(tmp, cache_file)
    return folder
