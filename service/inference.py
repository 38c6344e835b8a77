"""The inference core: MR-GAN synthesis and face embedding on onnxruntime (never torch).

The HTTP API, the Celery bulk jobs and the `lrface` CLI all go through `Synthesizer` and `Embedder`.
The ONNX inputs/outputs and JSON sidecars they expect are fixed in docs/ARCHITECTURE.md.

Both classes are safe to share between threads: they hold one onnxruntime session each (whose `run` is
thread-safe) and no other mutable state.
"""
from __future__ import annotations

import json
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

from models.face import (
    FACE_HEIGHT,
    MIN_INPUT_HEIGHT,
    from_model_output,
    lr_width_for_height,
    to_canvas,
    to_lr_size,
    to_model_input,
)

# Heights a caller may ask for: below MIN_INPUT_HEIGHT nothing face-like is left, above the canvas it is not LR.
MIN_HEIGHT = MIN_INPUT_HEIGHT
MAX_HEIGHT = FACE_HEIGHT

_PROVIDER_CHOICES = ("auto", "cpu", "cuda")


class ModelNotFoundError(RuntimeError):
    """A model file or its JSON sidecar is missing; the message says which file and how to get it."""


@dataclass
class Variant:
    """One synthesized LR face.

    `height` x `width` is the simulated LR capture size (width = `lr_width_for_height(height)`); `image` has
    that size, or is the 112x96 canvas when synthesized with `canvas=True`.
    """

    image: np.ndarray  # uint8 H x W x 3
    k: int
    seed: int
    height: int
    width: int


def default_model_path(name: str) -> Path:
    """`models/weights/<name>.onnx` inside the installed `models` package (works from a wheel too)."""
    import models

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


def _load_model(model_path: str | Path | None, name: str, what: str, providers: list[str] | None,
                threads: int | None) -> tuple[Path, ort.InferenceSession, dict]:
    path = Path(model_path) if model_path is not None else default_model_path(name)
    sidecar = path.with_suffix(".json")
    how = (f"The shipped {what} weights are models/weights/{name}.onnx + {name}.json (part of the lrface package); "
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
    session = ort.InferenceSession(str(path), sess_options=options,
                                   providers=providers if providers is not None else execution_providers())
    return path, session, meta


def _check_io(session: ort.InferenceSession, path: Path, inputs: set[str], output: str) -> None:
    have_in = {i.name for i in session.get_inputs()}
    have_out = {o.name for o in session.get_outputs()}
    if not inputs <= have_in or output not in have_out:
        raise ValueError(f"{path} does not follow the model contract: expected inputs {sorted(inputs)} and output "
                         f"{output!r}, found inputs {sorted(have_in)} and outputs {sorted(have_out)}")


def _check_faces(faces: list[np.ndarray]) -> list[np.ndarray]:
    checked = []
    for i, face in enumerate(faces):
        face = np.asarray(face)
        if face.dtype != np.uint8 or face.ndim != 3 or face.shape[2] != 3:
            raise ValueError(f"face {i} must be a uint8 H x W x 3 RGB array, got {face.dtype} {face.shape}")
        if face.shape[0] < MIN_INPUT_HEIGHT or face.shape[1] < 1:
            raise ValueError(f"face {i} is {face.shape[0]} px high; at least {MIN_INPUT_HEIGHT} px are needed")
        checked.append(face)
    return checked


def _check_height(name: str, value: int | None) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{name} must be an integer, not {value!r}")
    if not MIN_HEIGHT <= value <= MAX_HEIGHT:
        raise ValueError(f"{name} must be within [{MIN_HEIGHT}, {MAX_HEIGHT}] px, not {value}")


class Synthesizer:
    """MR-GAN: K realistic LR variants of aligned HR faces, reproducible per (key, seed, k)."""

    def __init__(self, model_path: str | Path | None = None, providers: list[str] | None = None,
                 threads: int | None = None, max_batch: int = 32):
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, not {max_batch}")
        self.model_path, self._session, meta = _load_model(model_path, "mrgan", "MR-GAN", providers, threads)
        _check_io(self._session, self.model_path, {"face", "z", "scale"}, "lr_canvas")
        try:
            self.model_id: str = str(meta["model_id"])
            self.z_dim: int = int(meta["z_dim"])
            lo, hi = (int(v) for v in meta["height_range"])
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"{self.model_path.with_suffix('.json')} lacks a valid model_id / z_dim / height_range: {exc}") from None
        self.height_range: tuple[int, int] = (lo, hi)
        self.max_batch = max_batch
        self.providers: list[str] = self._session.get_providers()
        values = np.asarray(meta.get("height_values") or [], dtype=np.int64)
        weights = meta.get("height_weights")
        weights = np.ones(len(values)) if weights is None else np.asarray(weights, dtype=np.float64)
        if len(weights) != len(values) or (weights < 0).any():
            raise ValueError(f"{self.model_path.with_suffix('.json')}: height_weights must be as long as height_values and >= 0")
        self._height_values, self._height_weights = values, weights
        self._height_cache: dict[tuple[int, int], tuple[np.ndarray, np.ndarray] | None] = {}

    # -- randomness -------------------------------------------------------------------------------------------

    def _height_bounds(self, min_height: int | None, max_height: int | None) -> tuple[int, int]:
        _check_height("min_height", min_height)
        _check_height("max_height", max_height)
        lo = self.height_range[0] if min_height is None else int(min_height)
        hi = self.height_range[1] if max_height is None else int(max_height)
        if lo > hi:
            if min_height is not None and max_height is not None:
                raise ValueError(f"min_height ({lo}) must not exceed max_height ({hi})")
            raise ValueError(f"the height range [{lo}, {hi}] is empty: the model's default range is "
                             f"{list(self.height_range)}; give both min_height and max_height")
        return lo, hi

    def _height_distribution(self, lo: int, hi: int) -> tuple[np.ndarray, np.ndarray] | None:
        """The sidecar's empirical heights restricted to [lo, hi], or None when nothing is left there."""
        if (lo, hi) not in self._height_cache:
            mask = (self._height_values >= lo) & (self._height_values <= hi)
            values, weights = self._height_values[mask], self._height_weights[mask]
            total = weights.sum()
            self._height_cache[(lo, hi)] = (values, weights / total) if len(values) and total > 0 else None
        return self._height_cache[(lo, hi)]

    def variant_params(self, key: str, seed: int, k: int, height: int | None = None,
                       min_height: int | None = None, max_height: int | None = None) -> tuple[int, np.ndarray]:
        """(height, z) of variant `k` of the source `key` under run seed `seed` (docs/ARCHITECTURE.md).

        The generator is `np.random.default_rng([seed, zlib.crc32(key.encode()), k])`. Unless `height` is fixed,
        the height is drawn first: from the sidecar's `height_values` / `height_weights` restricted to
        [min_height, max_height] (each bound defaults to the sidecar's `height_range`), or uniformly among the
        integers of that range when the restriction leaves nothing. Then `z = rng.standard_normal(z_dim,
        dtype=np.float32)`. Depends on nothing else, so outputs do not depend on batching or order.
        """
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
            raise ValueError(f"seed must be an integer >= 0, not {seed!r}")
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 0:
            raise ValueError(f"variant index k must be an integer >= 0, not {k!r}")
        _check_height("height", height)
        if height is not None and (min_height is not None or max_height is not None):
            raise ValueError("give either a fixed height or min_height / max_height, not both")
        rng = np.random.default_rng([int(seed), zlib.crc32(key.encode("utf-8")), int(k)])
        if height is None:
            lo, hi = self._height_bounds(min_height, max_height)
            dist = self._height_distribution(lo, hi)
            height = int(rng.choice(dist[0], p=dist[1])) if dist is not None else int(rng.integers(lo, hi + 1))
        z = rng.standard_normal(self.z_dim, dtype=np.float32)
        return int(height), z

    # -- synthesis --------------------------------------------------------------------------------------------

    def synthesize(self, faces: list[np.ndarray], *, keys: list[str], variants: int, seed: int,
                   height: int | None = None, min_height: int | None = None, max_height: int | None = None,
                   canvas: bool = False) -> list[list[Variant]]:
        """`variants` LR variants of each face; result[i][k] is variant k of faces[i].

        `faces` are uint8 RGB arrays of any size (brought to the canvas with `to_canvas`); `keys[i]` names
        face i for the randomness (the relative path in bulk runs). (face, variant) pairs are run in batches
        of up to `max_batch`.
        """
        if isinstance(variants, bool) or not isinstance(variants, (int, np.integer)) or variants < 1:
            raise ValueError(f"variants must be an integer >= 1, not {variants!r}")
        if len(keys) != len(faces):
            raise ValueError(f"got {len(faces)} faces but {len(keys)} keys; give one key per face")
        faces = _check_faces(list(faces))
        # Validate the height arguments once, before any work.
        if faces:
            self.variant_params(keys[0], seed, 0, height, min_height, max_height)
        canvases = [to_model_input(face)[0] for face in faces]
        items = []  # (face index, k, height, z)
        for i, key in enumerate(keys):
            for k in range(variants):
                h, z = self.variant_params(key, seed, k, height, min_height, max_height)
                items.append((i, k, h, z))
        results: list[list[Variant]] = [[] for _ in faces]
        for start in range(0, len(items), self.max_batch):
            chunk = items[start:start + self.max_batch]
            feed = {
                "face": np.stack([canvases[i] for i, _, _, _ in chunk]),
                "z": np.stack([z for _, _, _, z in chunk]),
                "scale": np.array([[h / FACE_HEIGHT] for _, _, h, _ in chunk], dtype=np.float32),
            }
            (out,) = self._session.run(["lr_canvas"], feed)
            for (i, k, h, _), rgb in zip(chunk, from_model_output(out)):
                native = to_lr_size(rgb, h)
                image = to_canvas(native) if canvas else native
                results[i].append(Variant(image=image, k=k, seed=int(seed), height=h, width=lr_width_for_height(h)))
        return results


class Embedder:
    """Resolution-robust face embeddings: faces of any size -> L2-normalised float32 vectors."""

    def __init__(self, model_path: str | Path | None = None, providers: list[str] | None = None,
                 threads: int | None = None, max_batch: int = 64):
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, not {max_batch}")
        self.model_path, self._session, meta = _load_model(model_path, "embedder", "embedder", providers, threads)
        _check_io(self._session, self.model_path, {"face"}, "embedding")
        try:
            self.model_id: str = str(meta["model_id"])
            self.dim: int = int(meta["dim"])
            self.verify_threshold: float = float(meta["verify_threshold"])
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"{self.model_path.with_suffix('.json')} lacks a valid model_id / dim / verify_threshold: {exc}") from None
        self.max_batch = max_batch
        self.providers: list[str] = self._session.get_providers()

    def embed(self, faces: list[np.ndarray]) -> np.ndarray:
        """float32 N x dim, each row L2-normalised; faces are uint8 RGB of any size (>= 8 px high)."""
        faces = _check_faces(list(faces))
        out = np.zeros((len(faces), self.dim), dtype=np.float32)
        for start in range(0, len(faces), self.max_batch):
            batch = to_model_input(faces[start:start + self.max_batch])
            (emb,) = self._session.run(["embedding"], {"face": batch})
            out[start:start + len(batch)] = emb
        # The contract says the model normalises; renormalising guards against export drift.
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        return np.divide(out, norms, out=out, where=norms > 0).astype(np.float32, copy=False)
