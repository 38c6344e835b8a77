"""Offline commands on folders: `lrface augment`, `lrface synth` and `lrface embed` (onnxruntime, no torch).

The reusable steps of a bulk augmentation are plain functions so that the Celery bulk jobs
(`lrface/service/tasks.py`) can run them on chunks of a folder and get the same files as the CLI:

    rel_paths = plan_sources(input_dir, output_dir)                  # once per job: sorted relative paths
    results = augment_sources(synth, input_dir, output_dir, chunk, variants, seed, ...)   # per chunk, idempotent
    write_errors(output_dir, [r for r in all_results if r["status"] == "failed"])         # once, at the end
    write_manifest(synth, output_dir, rel_paths, variants, seed, ...)                     # once, at the end

Embedding jobs and `lrface embed` share `plan_embed_sources` and `embed_sources`, and with them the decision of
what each image is (an aligned crop, or a photo whose face is detected and aligned: `EMBED_ALIGN_DEFAULT`).

Every output depends only on (relative path, seed, k) and the model (docs/ARCHITECTURE.md, "Reproducible
randomness"), so chunks may run in any order, on any worker, and be retried: existing outputs are skipped and
every file is written to a temp name and renamed.
"""
from __future__ import annotations

import argparse
import errno
import hashlib
import io
import json
import os
import shutil
import stat
import sys
import threading
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
from tqdm import tqdm

from lrface.models.face import MIN_INPUT_HEIGHT, ImageDecodeError, decode_image, encode_png, lr_width_for_height
from lrface.service import recordio
from lrface.service.detect import NoFaceError, choose_align
from lrface.service.inference import MAX_HEIGHT, MIN_HEIGHT, Embedder, ModelNotFoundError, Synthesizer, execution_providers
from lrface.training.data import IMAGE_EXTENSIONS

MANIFEST_NAME = "manifest.jsonl"
ERRORS_NAME = "errors.jsonl"
EMBEDDINGS_NAME = "embeddings.npz"
REC_NAME = "train.rec"


# -- folders and files -----------------------------------------------------------------------------------------

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


def output_path(rel_path: str, k: int) -> str:
    """Output of variant k of a source, relative to the output folder: `<rel without extension>_<k>.png`."""
    stem = rel_path.rsplit(".", 1)[0] if "." in rel_path.rsplit("/", 1)[-1] else rel_path
    return f"{stem}_{k}.png"


def _temp_name(name: str) -> str:
    """A short temp name for `name` in the same folder: a digest, not the name itself, so that a name near the
    file-system limit (255 bytes) still has a temp name; unique per process and thread."""
    digest = hashlib.sha1(name.encode("utf-8", "surrogateescape")).hexdigest()[:16]
    return f".{digest}.{os.getpid()}.{threading.get_ident()}.tmp"


def write_atomic(path: str | os.PathLike, data: bytes) -> None:
    """Write bytes to a temp file in the same folder and rename it over `path` (readers never see half a file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / _temp_name(path.name)
    try:
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _write_jsonl(path: Path, rows: Iterable[dict]) -> int:
    lines = [json.dumps(row, ensure_ascii=False) + "\n" for row in rows]
    write_atomic(path, "".join(lines).encode("utf-8"))
    return len(lines)


def _read_regular_file(path: str | os.PathLike) -> bytes:
    """The bytes of a regular file. A FIFO, socket or device file is refused without reading it: reading a FIFO
    blocks for ever and a device like /dev/zero never ends (O_NONBLOCK makes the open itself safe)."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise ImageDecodeError("not_a_file", "not a regular file (a FIFO, socket or device file)")
        return f.read()


def read_face(path: str | os.PathLike) -> np.ndarray:
    """Read an aligned face with the shared decoder; raises ImageDecodeError (or OSError) when it cannot be used."""
    return load_face(path, "none")[0]


def load_face(path: str | os.PathLike, align: str | None = "none", detector=None) -> tuple[np.ndarray, dict | None]:
    """Read an image file and make it the face the models take (`prepare_face`).

    Returns (face, detection box or None); raises ImageDecodeError (reason "no_face" when no face is found) or OSError.
    """
    return prepare_face(decode_image(_read_regular_file(path)), align, detector)


def prepare_face(rgb: np.ndarray, align: str | None = "none", detector=None) -> tuple[np.ndarray, dict | None]:
    """A decoded image made the face the models take, as the API does: `align` "none" (an aligned crop), "auto"
    (the most prominent face, detected and aligned by `detector`, a `lrface.service.detect.FaceDetector` or a
    `LazyDetector`) or None (none for an image shaped like an aligned crop, else auto: `lrface.service.detect.choose_align`).

    Returns (face, detection box or None); raises ImageDecodeError (reason "no_face" when no face is found).
    """
    chosen = choose_align(align, rgb.shape[0], rgb.shape[1])
    if chosen == "none":
        if rgb.shape[0] < MIN_INPUT_HEIGHT:
            raise ImageDecodeError("too_small", f"image is {rgb.shape[0]} px high; at least {MIN_INPUT_HEIGHT} px are needed")
        return rgb, None
    if detector is None:
        raise ValueError("align=auto needs a face detector")
    try:
        face, detection = detector.align(rgb)
    except NoFaceError:
        hint = "" if align is not None else (
            f" (the image is {rgb.shape[1]}x{rgb.shape[0]}, not shaped like an aligned 112x96 face crop, so the face "
            "was looked for; `lrface embed --align none` takes the whole image as the face)")
        raise ImageDecodeError("no_face", "no face was found in the image" + hint) from None
    return face, detection.box()


class LazyDetector:
    """A face detector built on first use: with align unset, a folder of aligned crops never loads one."""

    def __init__(self, factory: Callable[[], object]):
        self._factory = factory
        self._detector = None
        self._lock = threading.Lock()

    def load(self):
        """The detector itself (built now when it was not yet)."""
        if self._detector is None:
            with self._lock:
                if self._detector is None:
                    self._detector = self._factory()
        return self._detector

    def align(self, rgb: np.ndarray):
        return self.load().align(rgb)


def default_detector(providers: list[str] | None = None, threads: int | None = None) -> LazyDetector:
    """The API's face detector (RetinaFace), loaded when an image first needs it."""
    def make():
        from lrface.service.detect import FaceDetector

        return FaceDetector(providers=providers, threads=threads)

    return LazyDetector(make)


def _write_failure(rel_path: str, exc: OSError) -> dict:
    # strerror, not str(exc): that would carry the server's absolute path (and an over-long name twice).
    reason = "name_too_long" if exc.errno == errno.ENAMETOOLONG else "write_failed"
    return {"source": rel_path, "status": "failed", "reason": reason,
            "message": f"its output could not be written: {exc.strerror or type(exc).__name__}"}


def _failure(rel_path: str, exc: Exception) -> dict:
    if isinstance(exc, (ImageDecodeError, recordio.RecordError)):
        return {"source": rel_path, "status": "failed", "reason": exc.reason, "message": exc.message}
    return {"source": rel_path, "status": "failed", "reason": "unreadable", "message": str(exc)}


# -- where faces come from: a folder of images or a RecordIO dataset -------------------------------------------

READ_ERRORS = (ImageDecodeError, recordio.RecordError, OSError)


class FolderFaces:
    """Faces named by their path relative to a folder."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)

    def load(self, name: str, align: str | None = "none", detector=None) -> tuple[np.ndarray, dict | None]:
        """(face, detection box or None) of one image, aligned as `prepare_face` says."""
        return load_face(self.root / name, align, detector)

    def read(self, name: str) -> np.ndarray:
        return self.load(name)[0]


class RecordFaces:
    """Faces named `<label>/<record id>` in a RecordIO dataset."""

    def __init__(self, path: str | os.PathLike):
        self.dataset = recordio.open_dataset(path)

    def load(self, name: str, align: str | None = "none", detector=None) -> tuple[np.ndarray, dict | None]:
        """(face, detection box or None) of one image record, aligned as `prepare_face` says."""
        return prepare_face(decode_image(self.dataset.read_image(name)), align, detector)

    def read(self, name: str) -> np.ndarray:
        return self.load(name)[0]


def face_source(source: str | os.PathLike | FolderFaces | RecordFaces) -> FolderFaces | RecordFaces:
    """The faces of a job or command input: a folder, or a `.rec` file (its `.idx` beside it, when there is one)."""
    if isinstance(source, (FolderFaces, RecordFaces)):
        return source
    return RecordFaces(source) if recordio.is_recordio(source) else FolderFaces(source)


# -- bulk augmentation -----------------------------------------------------------------------------------------

def plan_sources(input_dir: str | os.PathLike, output_dir: str | os.PathLike, *,
                 errors: list[dict] | None = None) -> list[str]:
    """The sources of an augmentation run: image paths under input_dir relative to it, sorted.

    An output_dir inside input_dir is not walked. Two sources whose outputs would share a name (`a.jpg` and
    `a.png` in one folder) cannot both be written: the first in sorted order is kept, each other one is left
    out and, when `errors` is given, appended to it as a failure (reason "name_collision").
    A `.rec` input gives its image records' names (`<label>/<record id>`, in record id order); records that
    cannot be read are failures.
    """
    if recordio.is_recordio(input_dir):
        return _plan_records(input_dir, errors)
    paths = find_images(input_dir, exclude=output_dir)
    kept, owner = [], {}
    for rel in paths:
        stem = output_path(rel, 0)
        if stem in owner:
            if errors is not None:
                errors.append({"source": rel, "status": "failed", "reason": "name_collision",
                               "message": f"its outputs would overwrite those of {owner[stem]}"})
            continue
        owner[stem] = rel
        kept.append(rel)
    return kept


def augment_sources(synth: Synthesizer, input_dir: str | os.PathLike, output_dir: str | os.PathLike,
                    rel_paths: list[str], variants: int, seed: int = 0, height: int | None = None,
                    min_height: int | None = None, max_height: int | None = None, canvas: bool = False, *,
                    progress: Callable[[int], None] | None = None, align: str | None = "none",
                    detector=None) -> list[dict]:
    """Write the K variants of each source in `rel_paths`; one result dict per source, in order.

    Result: `{"source", "status": "done" | "skipped" | "failed", "outputs": [paths relative to output_dir]}`,
    plus `"reason"` (a short code such as "not_an_image", "corrupt", "too_small") and `"message"` when failed.
    A source is skipped when all its K outputs exist; otherwise its missing outputs are written (atomically).
    Unreadable sources are failures, never exceptions. Invalid arguments raise ValueError before any work.
    `progress(n)` is called as sources finish (for a progress bar or a task's state). `align` / `detector`: as
    for `load_face` (default "none": the sources are aligned crops).
    """
    faces_in, output_dir = face_source(input_dir), Path(output_dir)
    if isinstance(variants, bool) or not isinstance(variants, int) or variants < 1:
        raise ValueError(f"variants must be an integer >= 1, not {variants!r}")
    synth.variant_params("", seed, 0, height, min_height, max_height)  # raises on invalid height arguments
    results: dict[str, dict] = {}
    pending = []
    for rel in rel_paths:
        outputs = [output_path(rel, k) for k in range(variants)]
        # (os.path.isfile: False, not an error, for a name too long to exist)
        if all(os.path.isfile(output_dir / o) for o in outputs):
            results[rel] = {"source": rel, "status": "skipped", "outputs": outputs}
            if progress:
                progress(1)
        else:
            pending.append(rel)
    per_call = max(1, synth.max_batch // variants)
    for start in range(0, len(pending), per_call):
        faces, keys = [], []
        for rel in pending[start:start + per_call]:
            try:
                faces.append(faces_in.load(rel, align, detector)[0])
                keys.append(rel)
            except READ_ERRORS as exc:
                results[rel] = _failure(rel, exc)
                if progress:
                    progress(1)
        made = synth.synthesize(faces, keys=keys, variants=variants, seed=seed, height=height,
                                min_height=min_height, max_height=max_height, canvas=canvas) if faces else []
        for rel, rel_variants in zip(keys, made):
            outputs = []
            try:
                for v in rel_variants:
                    out = output_path(rel, v.k)
                    if not os.path.isfile(output_dir / out):
                        write_atomic(output_dir / out, encode_png(v.image))
                    outputs.append(out)
            except OSError as exc:  # this source's outputs cannot be written (a name too long, ...): the run goes on
                results[rel] = _write_failure(rel, exc)
            else:
                results[rel] = {"source": rel, "status": "done", "outputs": outputs}
            if progress:
                progress(1)
    return [results[rel] for rel in rel_paths]


def manifest_rows(synth: Synthesizer, output_dir: str | os.PathLike, rel_paths: list[str], variants: int,
                  seed: int = 0, height: int | None = None, min_height: int | None = None,
                  max_height: int | None = None) -> list[dict]:
    """Manifest lines for the (source, k) pairs whose output exists, in (source, k) order.

    `height` / `width` are the simulated LR capture size (recomputed with `variant_params`, which is
    deterministic); with canvas outputs the image on disk is 112x96 but the line still gives that LR size.
    """
    output_dir = Path(output_dir)
    rows = []
    for rel in sorted(rel_paths):
        for k in range(variants):
            out = output_path(rel, k)
            if not os.path.isfile(output_dir / out):
                continue
            h = int(height) if height is not None else synth.variant_params(rel, seed, k, None, min_height, max_height)[0]
            rows.append({"source": rel, "output": out, "k": k, "seed": int(seed), "height": h,
                         "width": lr_width_for_height(h)})
    return rows


def write_manifest(synth: Synthesizer, output_dir: str | os.PathLike, rel_paths: list[str], variants: int,
                   seed: int = 0, height: int | None = None, min_height: int | None = None,
                   max_height: int | None = None) -> int:
    """Rewrite `output_dir/manifest.jsonl` from scratch (atomically) from the outputs on disk; returns its line count.

    Pass the whole run's `rel_paths` (from `plan_sources`), not a chunk: the file describes the whole folder.
    Idempotent: the same outputs on disk give the same bytes.
    """
    rows = manifest_rows(synth, output_dir, rel_paths, variants, seed, height, min_height, max_height)
    return _write_jsonl(Path(output_dir) / MANIFEST_NAME, rows)


def write_errors(output_dir: str | os.PathLike, failures: list[dict]) -> None:
    """Rewrite `output_dir/errors.jsonl` with one `{"source", "reason", "message"}` line per failure (sorted by
    source); removes a stale file when there are none."""
    path = Path(output_dir) / ERRORS_NAME
    if not failures:
        path.unlink(missing_ok=True)
        return
    rows = [{"source": f["source"], "reason": f.get("reason", "unreadable"), "message": f.get("message", "")}
            for f in sorted(failures, key=lambda f: f["source"])]
    _write_jsonl(path, rows)


# -- embeddings ----------------------------------------------------------------------------------------------

# What an image of `lrface embed` and of an embedding job becomes when no alignment is asked for: None is the
# API's default (`lrface.service.detect.choose_align`): an image shaped like an aligned 112x96 crop is taken as one, any
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
                failures.append(_failure(rel, exc))
        if faces:
            blocks.append(embedder.embed(faces))
        if progress:
            progress(len(batch))
    embeddings = np.concatenate(blocks) if blocks else np.zeros((0, embedder.dim), dtype=np.float32)
    return paths, embeddings.astype(np.float32, copy=False), failures


def embeddings_npz_bytes(paths: list[str], embeddings: np.ndarray) -> bytes:
    """The .npz `lrface embed` writes: `paths` (str array) and `embeddings` (float32)."""
    buf = io.BytesIO()
    np.savez(buf, paths=np.array(paths, dtype=np.str_), embeddings=np.asarray(embeddings, dtype=np.float32))
    return buf.getvalue()


def write_embeddings_from_parts(out: str | os.PathLike, parts: list[Path]) -> list[str]:
    """The same .npz as `embeddings_npz_bytes` of the parts' rows joined in order (each part an .npz with
    `paths` and `embeddings`), written block by block: one part's embeddings in memory at a time. Returns the
    paths."""
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
    tmp = out.parent / _temp_name(out.name)
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
        os.replace(tmp, out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return paths


# -- RecordIO output ---------------------------------------------------------------------------------------------

def source_label(rel: str, labels: dict[str, int]) -> int:
    """The identity label of a source: a record's own label (`<label>/<id>`), else the index of its top folder."""
    if recordio.is_record_name(rel):
        return recordio.parse_record_name(rel)[0]
    return labels[rel.split("/", 1)[0] if "/" in rel else ""]


def write_record_dataset(staging: Path, output_dir: Path, rel_paths: list[str], manifest: list[dict]) -> int:
    """Pack the variants in `staging` (as listed by `manifest`, rows of `manifest_rows`) into
    OUTPUT_DIR/train.rec + train.idx in insightface's layout, with the source's label; rewrite the manifest with
    each variant's record id. Returns the number of image records."""
    folders = sorted({rel.split("/", 1)[0] if "/" in rel else "" for rel in rel_paths})
    labels = {name: i for i, name in enumerate(folders)}
    rows = sorted(manifest, key=lambda r: (source_label(r["source"], labels), r["source"], r["k"]))
    for record_id, row in enumerate(rows, 1):
        row["label"] = source_label(row["source"], labels)
        row["record"] = record_id

    def images():
        for row in rows:
            yield row["label"], (staging / row["output"]).read_bytes()

    recordio.write_insightface(output_dir / REC_NAME, images())
    for row in rows:
        row["output"] = REC_NAME
    _write_jsonl(output_dir / MANIFEST_NAME, rows)
    return len(rows)


# -- command line ----------------------------------------------------------------------------------------------

class _Parser(argparse.ArgumentParser):
    """argparse with exit status 1 on invalid arguments (the lrface offline commands' convention)."""

    def error(self, message: str):
        self.print_usage(sys.stderr)
        self.exit(1, f"{self.prog}: error: {message}\n")


class _UsageError(Exception):
    pass


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, not {value}")
    return value


def _non_negative(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, not {value}")
    return value


def _add_model_args(p: argparse.ArgumentParser, name: str, default_batch: int) -> None:
    p.add_argument("--model", metavar="PATH", help=f"ONNX model (its JSON sidecar next to it); default: the shipped lrface/models/weights/{name}.onnx")
    p.add_argument("--batch-size", type=_positive, default=default_batch, metavar="N", help=f"faces per model call (default {default_batch})")
    p.add_argument("--threads", type=_positive, metavar="N", help="onnxruntime intra-op threads (default: all cores)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="execution provider (default auto: CUDA when available)")


def _add_synthesis_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--variants", "-k", type=_positive, required=True, metavar="K", help="LR variants per face")
    p.add_argument("--seed", type=_non_negative, default=0, metavar="S", help="run seed (default 0); same seed, same files")
    p.add_argument("--height", type=int, metavar="H", help="fixed LR height in px (default: drawn per variant from the model's height distribution)")
    p.add_argument("--min-height", type=int, metavar="A", help="lowest LR height to draw")
    p.add_argument("--max-height", type=int, metavar="B", help="highest LR height to draw")
    p.add_argument("--canvas", action="store_true", help="write 112x96 canvases instead of native LR sizes")
    p.add_argument("--align", choices=("none", "auto"), default="none",
                   help="none (default): the images are aligned face crops; auto: detect and align the most prominent "
                        "face of each image first (RetinaFace, as the API's align=auto)")
    _add_model_args(p, "mrgan", 32)


def _load_synthesizer(args) -> Synthesizer:
    if args.height is not None and (args.min_height is not None or args.max_height is not None):
        raise _UsageError("give either --height or --min-height / --max-height, not both")
    for flag, value in (("--height", args.height), ("--min-height", args.min_height), ("--max-height", args.max_height)):
        if value is not None and not MIN_HEIGHT <= value <= MAX_HEIGHT:
            raise _UsageError(f"{flag} must be within [{MIN_HEIGHT}, {MAX_HEIGHT}] px, not {value}")
    synth = Synthesizer(args.model, providers=execution_providers(args.device), threads=args.threads,
                        max_batch=args.batch_size)
    try:
        synth.variant_params("", args.seed, 0, args.height, args.min_height, args.max_height)
    except ValueError as exc:
        raise _UsageError(str(exc).replace("min_height", "--min-height").replace("max_height", "--max-height")) from None
    return synth


def _load_detector(args, align: str | None):
    """The face detector, unless every image is taken as an aligned crop: loaded now for --align auto, on the
    first image that needs it without --align (a folder or .rec of aligned crops never loads it)."""
    if align == "none":
        return None
    detector = default_detector(providers=execution_providers(args.device), threads=args.threads)
    if align == "auto":
        detector.load()
    return detector


def _run(prog: str, body: Callable[[], int]) -> int:
    try:
        return body()
    except (_UsageError, ModelNotFoundError, ValueError) as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 1


def main_augment(argv: list[str] | None = None) -> int:
    p = _Parser(prog="lrface augment", description="Write K realistic LR variants of every face of INPUT (a folder "
                "or a .rec) to OUTPUT_DIR/<relative path without extension>_<k>.png, plus OUTPUT_DIR/manifest.jsonl. "
                "Resumable: faces whose K outputs exist are skipped.")
    p.add_argument("input_dir", metavar="INPUT", help="folder of aligned HR faces, or photos with --align auto "
                   "(walked recursively), or a RecordIO DATA.rec (its DATA.idx beside it): records are named "
                   "<label>/<record id>")
    p.add_argument("output_dir", metavar="OUTPUT_DIR", help="where the variants go (may be inside INPUT_DIR; it is not walked)")
    p.add_argument("--out-format", choices=("png", "rec"), default="png",
                   help="png (default): one file per variant; rec: OUTPUT_DIR/train.rec + train.idx (insightface's "
                   "layout, the source's label kept) and the manifest")
    _add_synthesis_args(p)
    args = p.parse_args(argv)

    def body() -> int:
        input_dir, output_dir = Path(args.input_dir), Path(args.output_dir)
        is_rec = recordio.is_recordio(input_dir)
        if not input_dir.is_dir() and not is_rec:
            raise _UsageError(f"input {input_dir} does not exist or is neither a folder nor a .rec file")
        if output_dir.resolve() == input_dir.resolve():
            raise _UsageError("OUTPUT_DIR must differ from INPUT_DIR")
        failures: list[dict] = []
        try:
            sources = plan_sources(input_dir, output_dir, errors=failures)
        except (OSError, ValueError) as exc:
            raise _UsageError(f"cannot read {input_dir}: {exc}") from None
        if not sources and not failures:
            raise _UsageError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) under {input_dir}" if not is_rec
                              else f"no image records in {input_dir}")
        synth = _load_synthesizer(args)
        detector = _load_detector(args, args.align)
        output_dir.mkdir(parents=True, exist_ok=True)
        final_dir = output_dir
        if args.out_format == "rec":
            output_dir = final_dir / ".variants"  # PNGs first (resumable), packed into train.rec at the end
        for f in failures:
            tqdm.write(f"lrface augment: skipping {f['source']}: {f['message']}", file=sys.stderr)
        with tqdm(total=len(sources), unit="face", desc="augment", file=sys.stderr) as bar:
            # Chunks bound the work between reports so failures show up as they happen.
            results = []
            for start in range(0, len(sources), 256):
                chunk = augment_sources(synth, input_dir, output_dir, sources[start:start + 256], args.variants,
                                        args.seed, args.height, args.min_height, args.max_height, args.canvas,
                                        progress=bar.update, align=args.align, detector=detector)
                for r in chunk:
                    if r["status"] == "failed":
                        tqdm.write(f"lrface augment: cannot read {r['source']}: {r['message']} ({r['reason']})", file=sys.stderr)
                results += chunk
        failures += [r for r in results if r["status"] == "failed"]
        write_errors(final_dir, failures)
        if args.out_format == "rec":
            rows = manifest_rows(synth, output_dir, sources, args.variants, args.seed, args.height,
                                 args.min_height, args.max_height)
            lines = write_record_dataset(output_dir, final_dir, sources, rows)
            shutil.rmtree(output_dir, ignore_errors=True)
            where = f"{final_dir / REC_NAME} (+ .idx, {final_dir / MANIFEST_NAME})"
        else:
            lines = write_manifest(synth, output_dir, sources, args.variants, args.seed, args.height,
                                   args.min_height, args.max_height)
            where = str(output_dir / MANIFEST_NAME)
        done = sum(r["status"] == "done" for r in results)
        skipped = sum(r["status"] == "skipped" for r in results)
        print(f"augment: {done} done, {skipped} skipped, {len(failures)} failed; {lines} variants in {where}"
              + (f"; failures in {final_dir / ERRORS_NAME}" if failures else ""))
        return 0

    return _run("lrface augment", body)


def main_synth(argv: list[str] | None = None) -> int:
    p = _Parser(prog="lrface synth", description="Write K realistic LR variants of one aligned HR face to "
                "DIR/<stem>_<k>.png, plus DIR/manifest.jsonl. Same files as `lrface augment` on its folder.")
    p.add_argument("image", metavar="IMAGE", help="aligned HR face image, or a photo with --align auto")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder")
    _add_synthesis_args(p)
    args = p.parse_args(argv)

    def body() -> int:
        image = Path(args.image)
        if not image.is_file():
            raise _UsageError(f"image {image} does not exist")
        synth = _load_synthesizer(args)
        out = Path(args.out)
        (result,) = augment_sources(synth, image.parent, out, [image.name], args.variants, args.seed, args.height,
                                    args.min_height, args.max_height, args.canvas, align=args.align,
                                    detector=_load_detector(args, args.align))
        if result["status"] == "failed":
            print(f"lrface synth: cannot read {image}: {result['message']} ({result['reason']})", file=sys.stderr)
            return 1
        write_manifest(synth, out, [image.name], args.variants, args.seed, args.height, args.min_height, args.max_height)
        for o in result["outputs"]:
            print(out / o)
        return 0

    return _run("lrface synth", body)


def main_embed(argv: list[str] | None = None) -> int:
    p = _Parser(prog="lrface embed", description="Embed every face of INPUT (a folder or a .rec) into an .npz with "
                "`paths` (relative, '/'-separated) and `embeddings` (N x D float32, L2-normalised).")
    p.add_argument("input_dir", metavar="INPUT", help="folder of faces (any sizes, walked recursively), or a RecordIO "
                   "DATA.rec (its DATA.idx beside it): paths are then <label>/<record id>")
    p.add_argument("--out", required=True, metavar="FILE.npz", help="output file")
    p.add_argument("--align", choices=("none", "auto"),
                   help="none: every image is an aligned face crop; auto: detect and align the most prominent face of "
                        "each (RetinaFace, as the API's align=auto). Default: none for images shaped like an aligned "
                        "112x96 crop (width within 4%% or 1 px of height x 96/112), auto for the others, as the API "
                        "does without align; an image where no face is found is reported and left out")
    _add_model_args(p, "embedder", 64)
    args = p.parse_args(argv)

    def body() -> int:
        input_dir, out = Path(args.input_dir), Path(args.out)
        is_rec = recordio.is_recordio(input_dir)
        if not input_dir.is_dir() and not is_rec:
            raise _UsageError(f"input {input_dir} does not exist or is neither a folder nor a .rec file")
        failures: list[dict] = []
        try:
            sources = plan_embed_sources(input_dir, errors=failures)
        except (OSError, ValueError) as exc:
            raise _UsageError(f"cannot read {input_dir}: {exc}") from None
        for f in failures:
            print(f"lrface embed: skipping {f['source']}: {f['message']}", file=sys.stderr)
        if not sources:
            raise _UsageError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) under {input_dir}" if not is_rec
                              else f"no image records in {input_dir}")
        embedder = Embedder(args.model, providers=execution_providers(args.device), threads=args.threads,
                            max_batch=args.batch_size)
        detector = _load_detector(args, args.align)
        with tqdm(total=len(sources), unit="face", desc="embed", file=sys.stderr) as bar:
            paths, embeddings, read_failures = embed_sources(embedder, input_dir, sources, args.batch_size,
                                                             progress=bar.update, align=args.align,
                                                             detector=detector)
        for r in read_failures:
            print(f"lrface embed: cannot read {r['source']}: {r['message']} ({r['reason']})", file=sys.stderr)
        out.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(out, embeddings_npz_bytes(paths, embeddings))
        print(f"embed: {len(paths)} faces ({embedder.model_id}, dim {embedder.dim}) -> {out}; "
              f"{len(failures) + len(read_failures)} failed")
        return 0

    return _run("lrface embed", body)


def plan_embed_sources(input_path: str | os.PathLike, *, errors: list[dict] | None = None) -> list[str]:
    """The faces `lrface embed` (and an embedding job) takes: every image under a folder, sorted, or the image
    records of a .rec; unreadable records are appended to `errors`."""
    if recordio.is_recordio(input_path):
        return _plan_records(input_path, errors)
    return find_images(input_path)


def _plan_records(path: str | os.PathLike, errors: list[dict] | None) -> list[str]:
    # A dataset of its own (not the cached one the readers share): planning runs once, e.g. in an API process.
    with recordio.RecordDataset(path) as dataset:
        names, failures = dataset.names()
    if errors is not None:
        errors += failures
    return names


def main(argv: list[str] | None = None) -> int:
    """`python -m lrface.service.offline augment|synth|embed ...` (the same as `lrface ...`)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    commands = {"augment": main_augment, "synth": main_synth, "embed": main_embed}
    if not argv or argv[0] not in commands:
        print("usage: python -m lrface.service.offline {augment,synth,embed} ...", file=sys.stderr)
        return 1
    return commands[argv[0]](argv[1:])


if __name__ == "__main__":
    sys.exit(main())
