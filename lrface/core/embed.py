"""Bulk embedding: `lrface embed` and embedding jobs share the planning, the reading and the .npz (torch-free)."""
from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Callable

import numpy as np

from lrface.core import recordio
from lrface.core.faces import READ_ERRORS, default_detector, face_source, plan_records, read_failure
from lrface.core.files import find_images, temp_name
from lrface.core.embedder import Embedder


# What an image of `lrface embed` and of an embedding job becomes when no alignment is asked for: None is the
# API's default (`lrface.core.detect.choose_align`): an image shaped like an aligned 112x96 crop is taken as one, any
# other has its most prominent face detected and aligned. The CLI and the jobs share it through `embed_sources`.
EMBED_ALIGN_DEFAULT: str | None = None


def embed_sources(embedder: Embedder, source, rel_paths: list[str], batch_size: int, *,
                  progress: Callable[[int], None] | None = None, align: str | None = EMBED_ALIGN_DEFAULT,
                  detector=None) -> tuple[list[str], np.ndarray, list[dict]]:
    """(paths embedded, N x D float32 embeddings in that order, failures) of the faces `rel_paths` of `source`
    (a folder or a .rec), `batch_size` faces per model call. Unreadable faces, and images where no face is found,
    are failures, never exceptions.

    `align` / `detector`: as for `prepare_face` (default: the API's choice by the image's shape); without a
    detector, the default one is loaded when an image first needs it (pass one to share it between calls).
    """
    faces_in = face_source(source)
    if detector is None and align != "none":
        detector = default_detector()
    paths: list[str] = []
    blocks: list[np.ndarray] = []
    failures: list[dict] = []
    for start in range(0, len(rel_paths), batch_size):
        batch = rel_paths[start:start + batch_size]
        faces = []
        for rel in batch:
            try:
                faces.append(faces_in.load(rel, align, detector)[0])
                paths.append(rel)
            except READ_ERRORS as exc:
                failures.append(read_failure(rel, exc))
        if faces:
            blocks.append(embedder.embed(faces))
        if progress:
            progress(len(batch))
    embeddings = np.concatenate(blocks) if blocks else np.zeros((0, embedder.dim), dtype=np.float32)
    return paths, embeddings.astype(np.float32, copy=False), failures


def embeddings_npz_bytes(paths: list[str], embeddings: np.ndarray, model_id: str | None = None) -> bytes:
    """The .npz `lrface embed` writes: `paths` (str array), `embeddings` (float32) and, when given, `model_id`
    (a 0-d str array: the embedder that wrote them; embeddings of different models are not comparable)."""
    buf = io.BytesIO()
    extra = {} if model_id is None else {"model_id": np.array(model_id, dtype=np.str_)}
    np.savez(buf, paths=np.array(paths, dtype=np.str_), embeddings=np.asarray(embeddings, dtype=np.float32), **extra)
    return buf.getvalue()


def write_embeddings_from_parts(out: str | os.PathLike, parts: list[Path], model_id: str | None = None) -> list[str]:
    """The same .npz as `embeddings_npz_bytes` of the parts' rows joined in order (each part an .npz with
    `paths` and `embeddings`) and `model_id`, written block by block: one part's embeddings in memory at a time.
    Returns the paths."""
    import zipfile

    paths: list[str] = []
    rows, dim = 0, None
    for part in parts:
        with np.load(part) as npz:
            paths += [str(p) for p in npz["paths"]]
            shape = npz["embeddings"].shape
            rows += shape[0]
            dim = shape[1] if dim is None else dim
    out = Path(out)
    tmp = out.parent / temp_name(out.name)
    try:
        # np.savez's own layout: an uncompressed zip of paths.npy and embeddings.npy.
        with zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED, allowZip64=True) as zf:
            with zf.open("paths.npy", "w", force_zip64=True) as f:
                np.lib.format.write_array(f, np.array(paths, dtype=np.str_), allow_pickle=False)
            with zf.open("embeddings.npy", "w", force_zip64=True) as f:
                np.lib.format.write_array_header_1_0(
                    f, {"descr": np.lib.format.dtype_to_descr(np.dtype("<f4")), "fortran_order": False,
                        "shape": (rows, int(dim or 0))})
                for part in parts:
                    with np.load(part) as npz:
                        f.write(np.ascontiguousarray(npz["embeddings"], dtype="<f4").tobytes())
            if model_id is not None:
                with zf.open("model_id.npy", "w", force_zip64=True) as f:
                    np.lib.format.write_array(f, np.array(model_id, dtype=np.str_), allow_pickle=False)
        os.replace(tmp, out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return paths


def plan_embed_sources(input_path: str | os.PathLike, *, errors: list[dict] | None = None) -> list[str]:
    """The faces `lrface embed` (and an embedding job) takes: every image under a folder, sorted, or the image
    records of a .rec; unreadable records are appended to `errors`."""
    if recordio.is_recordio(input_path):
        return plan_records(input_path, errors)
    return find_images(input_path)
