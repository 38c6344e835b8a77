"""Where faces come from (a folder of images or a RecordIO dataset) and how an image becomes the face the models
take: as an aligned crop, or detected and aligned (`align`), exactly as the API does (torch-free)."""
from __future__ import annotations

import errno
import os
import threading
from pathlib import Path
from typing import Callable

import numpy as np

from lrface.core import recordio
from lrface.core.detect import NoFaceError, choose_align
from lrface.core.face import MIN_INPUT_HEIGHT, ImageDecodeError, decode_image
from lrface.core.files import read_regular_file


def read_face(path: str | os.PathLike) -> np.ndarray:
    """Read an aligned face with the shared decoder; raises ImageDecodeError (or OSError) when it cannot be used."""
    return load_face(path, "none")[0]


def load_face(path: str | os.PathLike, align: str | None = "none", detector=None) -> tuple[np.ndarray, dict | None]:
    """Read an image file and make it the face the models take (`prepare_face`).

    Returns (face, detection box or None); raises ImageDecodeError (reason "no_face" when no face is found) or OSError.
    """
    return prepare_face(decode_image(read_regular_file(path)), align, detector)


def prepare_face(rgb: np.ndarray, align: str | None = "none", detector=None) -> tuple[np.ndarray, dict | None]:
    """A decoded image made the face the models take, as the API does: `align` "none" (an aligned crop), "auto"
    (the most prominent face, detected and aligned by `detector`, a `lrface.core.detect.FaceDetector` or a
    `LazyDetector`) or None (none for an image shaped like an aligned crop, else auto: `lrface.core.detect.choose_align`).

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
        from lrface.core.detect import FaceDetector

        return FaceDetector(providers=providers, threads=threads)

    return LazyDetector(make)


def write_failure(rel_path: str, exc: OSError) -> dict:
    # strerror, not str(exc): that would carry the server's absolute path (and an over-long name twice).
    reason = "name_too_long" if exc.errno == errno.ENAMETOOLONG else "write_failed"
    return {"source": rel_path, "status": "failed", "reason": reason,
            "message": f"its output could not be written: {exc.strerror or type(exc).__name__}"}


def read_failure(rel_path: str, exc: Exception) -> dict:
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



def plan_records(path: str | os.PathLike, errors: list[dict] | None) -> list[str]:
    # A dataset of its own (not the cached one the readers share): planning runs once, e.g. in an API process.
    with recordio.RecordDataset(path) as dataset:
        names, failures = dataset.names()
    if errors is not None:
        errors += failures
    return names
