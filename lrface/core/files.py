"""Image files and output files: the image extensions, the folder walkers, atomic writes (torch-free).

The one home of these helpers: the CLI, the bulk jobs and the training code all find images and write outputs
through them. Every output is written to a temp name in its folder and renamed (readers never see half a file).
"""
from __future__ import annotations

import hashlib
import json
import os
import stat
import threading
from pathlib import Path
from typing import Iterable

from lrface.core.face import ImageDecodeError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff")

# The output layout of `lrface augment` / `lrface embed` and of the bulk jobs.
MANIFEST_NAME = "manifest.jsonl"
ERRORS_NAME = "errors.jsonl"
EMBEDDINGS_NAME = "embeddings.npz"
REC_NAME = "train.rec"


def find_images(root: str | os.PathLike, exclude: str | os.PathLike | None = None) -> list[str]:
    """Relative paths ('/'-separated, with extension) of every image file under root, sorted.

    `exclude` is a folder that is not walked (an output folder inside the input folder).
    """
    root = Path(root)
    skip = Path(exclude).resolve() if exclude is not None else None
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        if skip is not None:
            dirnames[:] = [d for d in dirnames if Path(dirpath, d).resolve() != skip]
        for name in filenames:
            if Path(name).suffix.lower() in IMAGE_EXTENSIONS:
                found.append(Path(dirpath, name).relative_to(root).as_posix())
    return sorted(found)




def list_images(root: str | os.PathLike) -> list[Path]:
    """Every image file under root, recursively, sorted by relative path (so order is reproducible)."""
    root = Path(root)
    found = [p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS]
    return sorted(found, key=lambda p: p.relative_to(root).as_posix())


def temp_name(name: str) -> str:
    """A short temp name for `name` in the same folder: a digest, not the name itself, so that a name near the
    file-system limit (255 bytes) still has a temp name; unique per process and thread."""
    digest = hashlib.sha1(name.encode("utf-8", "surrogateescape")).hexdigest()[:16]
    return f".{digest}.{os.getpid()}.{threading.get_ident()}.tmp"


def write_atomic(path: str | os.PathLike, data: bytes) -> None:
    """Write bytes to a temp file in the same folder and rename it over `path` (readers never see half a file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / temp_name(path.name)
    try:
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_jsonl(path: Path, rows: Iterable[dict]) -> int:
    lines = [json.dumps(row, ensure_ascii=False) + "\n" for row in rows]
    write_atomic(path, "".join(lines).encode("utf-8"))
    return len(lines)


def read_regular_file(path: str | os.PathLike) -> bytes:
    """The bytes of a regular file. A FIFO, socket or device file is refused without reading it: reading a FIFO
    blocks for ever and a device like /dev/zero never ends (O_NONBLOCK makes the open itself safe)."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise ImageDecodeError("not_a_file", "not a regular file (a FIFO, socket or device file)")
        return f.read()
