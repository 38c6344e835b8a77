"""The ONNX model base: loading a model and its JSON sidecar onto onnxruntime (never torch), checking its contract,
and the keyword arguments every model takes (providers, threads, batching).

The HTTP API, the Celery bulk jobs and the `lrface` CLI all go through `Synthesizer` (lrface.core.synthesizer) and
`Embedder` (lrface.core.embedder). The ONNX inputs/outputs and JSON sidecars they expect are fixed in
docs/ARCHITECTURE.md.

Models are safe to share between threads: they hold one onnxruntime session each (whose `run` is thread-safe) and
no other mutable state, except the optional micro-batcher (`micro_batch=True`, what the API uses;
lrface.core.batching).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import numpy as np
import onnxruntime as ort

from lrface.core.batching import MicroBatcher, make_batcher
from lrface.core.face import MIN_INPUT_HEIGHT

_PROVIDER_CHOICES = ("auto", "cpu", "cuda")


class ModelNotFoundError(RuntimeError):
    """A model file or its JSON sidecar is missing; the message says which file and how to get it."""


def default_model_path(name: str) -> Path:
    """`lrface/models/weights/<name>.onnx` inside the installed `models` package (works from a wheel too)."""
    from lrface import models

    return Path(models.__file__).resolve().parent / "weights" / f"{name}.onnx"


def execution_providers(preferred: str = "auto") -> list[str]:
    """onnxruntime providers for `preferred` in ("auto", "cpu", "cuda").

    "auto" puts CUDAExecutionProvider first when the installed onnxruntime (onnxruntime-gpu) offers it, with
    the CPU as fallback; "cuda" requires it.
    """
    if preferred not in _PROVIDER_CHOICES:
        raise ValueError(f"execution provider must be one of {', '.join(_PROVIDER_CHOICES)}, not {preferred!r}")
    available = ort.get_available_providers()
    has_cuda = "CUDAExecutionProvider" in available
    if preferred == "cuda" and not has_cuda:
        raise ValueError("CUDA was requested but this onnxruntime has no CUDAExecutionProvider; "
                         "install the GPU extra: pip install 'lrface[gpu]'")
    if preferred == "cpu" or not has_cuda:
        return ["CPUExecutionProvider"]
    return ["CUDAExecutionProvider", "CPUExecutionProvider"]


def load_model(model_path: str | Path | None, name: str, what: str, providers: list[str] | None,
                threads: int | None, spinning: bool | None = None) -> tuple[Path, ort.InferenceSession, dict]:
    path = Path(model_path) if model_path is not None else default_model_path(name)
    sidecar = path.with_suffix(".json")
    if path.parent == default_model_path(name).parent:  # a shipped file (e.g. embedder_lite.onnx): named as it is
        name = path.stem
    how = (f"The shipped {what} weights are lrface/models/weights/{name}.onnx + {name}.json (part of the lrface package); "
           f"otherwise export a checkpoint with `lrface export CKPT {name}.onnx` and pass its path "
           f"(--model on the command line).")
    if not path.is_file():
        raise ModelNotFoundError(f"{what} model not found: {path}. {how}")
    if not sidecar.is_file():
        raise ModelNotFoundError(f"{what} sidecar not found: {sidecar} (it must sit next to {path.name}). {how}")
    try:
        meta = json.loads(sidecar.read_text())
    except (OSError, ValueError) as exc:
        raise ValueError(f"{what} sidecar {sidecar} is not valid JSON: {exc}") from None
    if threads is not None and threads < 1:
        raise ValueError(f"threads must be >= 1, not {threads}")
    options = ort.SessionOptions()
    if threads is not None:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    if spinning is not None:
        # Idle intra-op threads spin for a while before sleeping (onnxruntime's default): the next call starts a
        # little sooner, but the spinning takes a core from whatever else the process does between calls.
        options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    session = ort.InferenceSession(str(path), sess_options=options,
                                   providers=providers if providers is not None else execution_providers())
    return path, session, meta


def check_io(session: ort.InferenceSession, path: Path, inputs: set[str], output: str) -> None:
    have_in = {i.name for i in session.get_inputs()}
    have_out = {o.name for o in session.get_outputs()}
    if not inputs <= have_in or output not in have_out:
        raise ValueError(f"{path} does not follow the model contract: expected inputs {sorted(inputs)} and output "
                         f"{output!r}, found inputs {sorted(have_in)} and outputs {sorted(have_out)}")


def check_faces(faces: list[np.ndarray]) -> list[np.ndarray]:
    checked = []
    for i, face in enumerate(faces):
        face = np.asarray(face)
        if face.dtype != np.uint8 or face.ndim != 3 or face.shape[2] != 3:
            raise ValueError(f"face {i} must be a uint8 H x W x 3 RGB array, got {face.dtype} {face.shape}")
        if face.shape[0] < MIN_INPUT_HEIGHT or face.shape[1] < 1:
            raise ValueError(f"face {i} is {face.shape[0]} px high; at least {MIN_INPUT_HEIGHT} px are needed")
        checked.append(face)
    return checked


class OnnxModel:
    """One ONNX model on onnxruntime with its sidecar, and its optional micro-batcher.

    A subclass names its files and contract (`NAME`, `WHAT`, `INPUTS`, `OUTPUT`), its default `max_batch`, and
    reads its sidecar in `_read_meta`. Arguments: `model_path` (default: the shipped weights), onnxruntime
    `providers` and intra-op `threads`, `max_batch` rows per model call; with `micro_batch`, a `MicroBatcher`
    waiting up to `batch_wait_ms` for more rows, queueing at most `batch_queue_size` requests for at most
    `batch_queue_timeout` s, reporting each call to `on_batch(rows, requests, seconds)`; `spinning`: whether idle
    onnxruntime threads spin (None: onnxruntime's default).
    """

    NAME: str = ""  # file stem of the shipped weights: lrface/models/weights/<NAME>.onnx
    WHAT: str = ""  # how messages name the model
    INPUTS: frozenset[str] = frozenset()
    OUTPUT: str = ""
    DEFAULT_MAX_BATCH: int = 32
    BATCHER_NAME: str = ""

    def __init__(self, model_path: str | Path | None = None, providers: list[str] | None = None,
                 threads: int | None = None, max_batch: int | None = None, *, micro_batch: bool = False,
                 batch_wait_ms: float = 0.0, batch_queue_size: int = 64, batch_queue_timeout: float | None = None,
                 on_batch: Callable[[int, int, float], None] | None = None, spinning: bool | None = None):
        max_batch = self.DEFAULT_MAX_BATCH if max_batch is None else max_batch
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, not {max_batch}")
        self.model_path, self._session, meta = load_model(model_path, self.NAME, self.WHAT, providers, threads,
                                                          spinning)
        check_io(self._session, self.model_path, set(self.INPUTS), self.OUTPUT)
        self._read_meta(meta)
        self.max_batch = max_batch
        self.providers: list[str] = self._session.get_providers()
        self.batcher: MicroBatcher | None = make_batcher(self.BATCHER_NAME, self._run_rows, micro_batch, max_batch,
                                                         batch_wait_ms, batch_queue_size, batch_queue_timeout,
                                                         on_batch)

    def _read_meta(self, meta: dict) -> None:
        """Read the sidecar's fields; ValueError naming the sidecar when one is missing or invalid."""

    def close(self) -> None:
        """Stop the micro-batcher (after finishing its queued requests); a no-op without one."""
        if self.batcher is not None:
            self.batcher.close()

    def _run_rows(self, feed: dict[str, np.ndarray]) -> np.ndarray:
        (out,) = self._session.run([self.OUTPUT], feed)
        return out
