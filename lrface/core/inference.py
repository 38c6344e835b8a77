"""The inference core: MR-GAN synthesis and face embedding on onnxruntime (never torch).

The HTTP API, the Celery bulk jobs and the `lrface` CLI all go through `Synthesizer` and `Embedder`.
The ONNX inputs/outputs and JSON sidecars they expect are fixed in docs/ARCHITECTURE.md.

Both classes are safe to share between threads: they hold one onnxruntime session each (whose `run` is
thread-safe) and no other mutable state, except the optional micro-batcher.

Micro-batching (`micro_batch=True`, what the API uses): each model gets one `MicroBatcher`, a bounded queue and
one worker thread that takes the rows of whatever requests are waiting (up to the model's `max_batch`, waiting
up to `batch_wait_ms` for more when the batch is not full), runs them as one onnxruntime call and hands every
request its own rows back. Concurrent requests then become a few large calls instead of many small ones that
fight over the same cores. Randomness is unaffected: each row's inputs (face, z, height) are fixed before it
is queued (docs/ARCHITECTURE.md, "Reproducible randomness").
"""
from __future__ import annotations

import asyncio
import collections
import json
import threading
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import onnxruntime as ort

from lrface.core.face import (
    FACE_HEIGHT,
    MIN_INPUT_HEIGHT,
    from_model_output,
    lr_width_for_height,
    to_canvas,
    to_model_input,
)

# Heights a caller may ask for: below MIN_INPUT_HEIGHT nothing face-like is left, above the canvas it is not LR.
MIN_HEIGHT = MIN_INPUT_HEIGHT
MAX_HEIGHT = FACE_HEIGHT
# Most faces an embed call may run on the caller's (event loop's) thread when `inline` is asked for.
INLINE_MAX_ROWS = 4

_PROVIDER_CHOICES = ("auto", "cpu", "cuda")


class ModelNotFoundError(RuntimeError):
    """A model file or its JSON sidecar is missing; the message says which file and how to get it."""


class Overloaded(RuntimeError):
    """A micro-batcher refused work: its queue is full, the request waited longer than its queue timeout, or the
    batcher is shutting down. The API answers 503 `overloaded` with Retry-After."""


class BatcherClosed(Overloaded):
    """The micro-batcher is shut down (the process is stopping)."""


class _Job:
    """One request's rows in a micro-batcher: settled once, through a threading.Event or an asyncio future."""

    __slots__ = ("feed", "n", "enqueued", "loop", "future", "event", "value", "error")

    def __init__(self, feed: dict[str, np.ndarray], n: int, loop=None, future=None):
        self.feed, self.n = feed, n
        self.enqueued = time.monotonic()
        self.loop, self.future = loop, future
        self.event = threading.Event() if future is None else None
        self.value = self.error = None

    def is_cancelled(self) -> bool:
        return self.future is not None and self.future.cancelled()

    def result(self, timeout: float | None = None) -> np.ndarray:
        """Block until the rows ran (sync jobs only)."""
        if not self.event.wait(timeout):
            raise TimeoutError(f"no result within {timeout} s")
        if self.error is not None:
            raise self.error
        return self.value


def _settle(items: list) -> None:
    """Runs in the event loop: set the asyncio futures of one batch (one wake-up of the loop per batch)."""
    for future, value, error in items:
        if future.done():  # cancelled meanwhile (client gone)
            continue
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(value)


class MicroBatcher:
    """One worker thread that runs the rows of concurrent requests as one model call.

    `run(feed)` takes a dict of arrays with a leading batch axis (the onnxruntime feed) and returns the output
    rows in the same order. Requests are queued whole (at most `max_queue` of them; one more raises `Overloaded`).
    The worker takes the oldest request and adds the next ones while they fit into `max_batch` rows. Batches form
    by themselves under load (requests queue up while the previous call runs); beyond that, while a batch that is
    not full has fewer requests than the previous call served (a sign of concurrent load), the worker waits for
    more until `max_wait_s` after the oldest request was queued: fewer, larger calls cost less CPU per row. A
    request that finds the model idle after a call for a lone request never waits, so a lightly loaded server adds
    no latency, and a batch that has as many requests as the last one does not wait in vain.
    A request with more rows than `max_batch` runs alone, in chunks of `max_batch`. A request that waited longer
    than `queue_timeout_s` before its batch started gets `Overloaded` instead of running. `close()` stops taking
    new requests, lets the worker finish every queued one, and joins it.
    """

    def __init__(self, name: str, run: Callable[[dict[str, np.ndarray]], np.ndarray], *, max_batch: int,
                 max_wait_s: float = 0.0, max_queue: int = 64, queue_timeout_s: float | None = None,
                 on_batch: Callable[[int, int, float], None] | None = None):
        if max_batch < 1 or max_queue < 1 or max_wait_s < 0:
            raise ValueError("max_batch and max_queue must be >= 1 and max_wait_s >= 0")
        self.name = name
        self._run = run
        self.max_batch, self.max_wait_s, self.max_queue = max_batch, max_wait_s, max_queue
        self.queue_timeout_s = queue_timeout_s
        self._on_batch = on_batch
        self._queue: collections.deque[_Job] = collections.deque()
        self._cond = threading.Condition()
        self._closing = False
        self._last_jobs = 0  # requests in the previous call: more than one means concurrent load
        self._running = 0  # model calls in progress (the worker's, and `run_now`'s)
        self.batches = 0  # model calls made (for metrics and tests)
        self.rows = 0
        self._thread = threading.Thread(target=self._work, name=f"lrface-batcher-{name}", daemon=True)
        self._thread.start()

    # -- submitting ---------------------------------------------------------------------------------------------

    def _enqueue(self, job: _Job) -> None:
        with self._cond:
            if self._closing:
                raise BatcherClosed(f"the {self.name} is shutting down")
            if len(self._queue) >= self.max_queue:
                raise Overloaded(f"the {self.name} queue is full ({self.max_queue} requests waiting)")
            self._queue.append(job)
            if len(self._queue) == 1:  # (the worker only ever waits on an empty queue)
                self._cond.notify()

    @staticmethod
    def _rows(feed: dict[str, np.ndarray]) -> int:
        sizes = {len(v) for v in feed.values()}
        if len(sizes) != 1:
            raise ValueError(f"every input of a feed needs the same number of rows, got {sorted(sizes)}")
        return sizes.pop()

    def submit(self, feed: dict[str, np.ndarray]) -> _Job:
        """Queue rows from any thread; `.result()` blocks until they ran. Raises `Overloaded` when full."""
        job = _Job(feed, self._rows(feed))
        self._enqueue(job)
        return job

    def submit_async(self, feed: dict[str, np.ndarray]) -> asyncio.Future:
        """Queue rows from a running event loop; await the returned future. Raises `Overloaded` when full.
        Cancelling the future (a client that went away) drops the rows if their batch has not started."""
        loop = asyncio.get_running_loop()
        job = _Job(feed, self._rows(feed), loop, loop.create_future())
        self._enqueue(job)
        return job.future

    def pending(self) -> int:
        return len(self._queue)

    # -- the worker ---------------------------------------------------------------------------------------------

    def _take(self) -> tuple[list[_Job], list[_Job]] | None:
        """The next batch and the requests that expired in the queue; None when closed and drained."""
        expired: list[_Job] = []
        with self._cond:
            while True:
                while not self._queue:
                    if self._closing:
                        return None
                    self._cond.wait()
                batch: list[_Job] = []
                rows = 0
                while self._queue:
                    job = self._queue[0]
                    if job.is_cancelled():
                        self._queue.popleft()
                        continue
                    if self.queue_timeout_s is not None and time.monotonic() - job.enqueued > self.queue_timeout_s:
                        expired.append(self._queue.popleft())
                        continue
                    if batch and rows + job.n > self.max_batch:
                        break
                    batch.append(self._queue.popleft())
                    rows += job.n
                    if rows >= self.max_batch:
                        break
                    if (not self._queue and self.max_wait_s > 0 and len(batch) < self._last_jobs
                            and not self._closing):
                        remaining = batch[0].enqueued + self.max_wait_s - time.monotonic()
                        if remaining > 0:
                            self._cond.wait(remaining)
                if batch or expired:
                    self._last_jobs = len(batch)
                    if batch:
                        self._running += 1  # (under the lock with the dequeue: `run_now` never sees a gap)
                    return batch, expired

    def _work(self) -> None:
        while True:
            taken = self._take()
            if taken is None:
                return
            batch, expired = taken
            settled: list[tuple[_Job, np.ndarray | None, BaseException | None]] = []
            for job in expired:
                settled.append((job, None, Overloaded(
                    f"the server is busy: the request waited more than {self.queue_timeout_s:g} s for the {self.name}")))
            if batch:
                try:
                    settled += self._run_batch(batch)
                finally:
                    with self._cond:
                        self._running -= 1
            self._settle_all(settled)

    def run_now(self, feed: dict[str, np.ndarray]) -> np.ndarray | None:
        """Run the rows at once in the calling thread when the batcher is idle (nothing queued, no call running)
        and they fit in one call; None otherwise (then `submit` them). Saves the two thread hand-offs of a
        queued request, which is what a lone request mostly waits for with a small model."""
        n = self._rows(feed)
        if n > self.max_batch:
            return None
        with self._cond:
            if self._closing or self._queue or self._running:
                return None
            self._running += 1
        try:
            ((_, out, error),) = self._run_batch([_Job(feed, n)])
        finally:
            with self._cond:
                self._running -= 1
        if error is not None:
            raise error
        return out

    def _run_batch(self, batch: list[_Job]) -> list:
        rows = sum(job.n for job in batch)
        start = time.perf_counter()
        try:
            if len(batch) == 1:
                feed = batch[0].feed
            else:
                feed = {k: np.concatenate([job.feed[k] for job in batch]) for k in batch[0].feed}
            if rows <= self.max_batch:
                out = self._run(feed)
            else:  # one request larger than a batch: in chunks, as without micro-batching
                out = np.concatenate([self._run({k: v[i:i + self.max_batch] for k, v in feed.items()})
                                      for i in range(0, rows, self.max_batch)])
        except BaseException as exc:  # a failed call fails its requests, not the worker
            return [(job, None, exc) for job in batch]
        self.batches += 1
        self.rows += rows
        if self._on_batch is not None:
            try:
                self._on_batch(rows, len(batch), time.perf_counter() - start)
            except Exception:
                pass
        settled, offset = [], 0
        for job in batch:
            settled.append((job, out[offset:offset + job.n], None))
            offset += job.n
        return settled

    @staticmethod
    def _settle_all(settled: list) -> None:
        by_loop: dict = {}
        for job, value, error in settled:
            if job.loop is None:
                job.value, job.error = value, error
                job.event.set()
            else:
                by_loop.setdefault(job.loop, []).append((job.future, value, error))
        for loop, items in by_loop.items():
            try:
                loop.call_soon_threadsafe(_settle, items)
            except RuntimeError:  # that event loop is closed: nobody waits for these any more
                pass

    # -- shutting down ------------------------------------------------------------------------------------------

    def close(self, timeout: float | None = 30.0) -> None:
        """Refuse new requests, finish the queued ones, stop the worker."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        if self._thread is not threading.current_thread():
            self._thread.join(timeout)

    @property
    def closed(self) -> bool:
        return self._closing


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


def _load_model(model_path: str | Path | None, name: str, what: str, providers: list[str] | None,
                threads: int | None, spinning: bool | None = None) -> tuple[Path, ort.InferenceSession, dict]:
    path = Path(model_path) if model_path is not None else default_model_path(name)
    sidecar = path.with_suffix(".json")
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
                 threads: int | None = None, max_batch: int = 32, *, micro_batch: bool = False,
                 batch_wait_ms: float = 0.0, batch_queue_size: int = 64, batch_queue_timeout: float | None = None,
                 on_batch: Callable[[int, int, float], None] | None = None, spinning: bool | None = None):
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, not {max_batch}")
        self.model_path, self._session, meta = _load_model(model_path, "mrgan", "MR-GAN", providers, threads,
                                                                spinning)
        _check_io(self._session, self.model_path, {"face", "z", "scale"}, "lr")
        # the sensor stage's per-pixel noise; a generator exported without that stage has no such input
        self._noise_shape: tuple[int, ...] | None = None
        for model_input in self._session.get_inputs():
            if model_input.name == "noise":
                self._noise_shape = tuple(int(d) for d in model_input.shape[1:])
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
        self.batcher = _make_batcher("MR-GAN synthesizer", self._run_rows, micro_batch, max_batch, batch_wait_ms,
                                     batch_queue_size, batch_queue_timeout, on_batch)

    def close(self) -> None:
        """Stop the micro-batcher (after finishing its queued requests); a no-op without one."""
        if self.batcher is not None:
            self.batcher.close()

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
        dtype=np.float32)`, then (models with a `noise` input) `noise = rng.standard_normal((3, 112, 96),
        dtype=np.float32)`. Depends on nothing else, so outputs do not depend on batching or order.
        """
        h, z, _ = self._draw(key, seed, k, height, min_height, max_height)
        return h, z

    def _draw(self, key: str, seed: int, k: int, height: int | None, min_height: int | None,
              max_height: int | None) -> tuple[int, np.ndarray, np.random.Generator]:
        """`variant_params` plus the generator, positioned after z (the noise comes next)."""
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
        return int(height), z, rng

    # -- synthesis --------------------------------------------------------------------------------------------

    def prepare(self, faces: list[np.ndarray], *, keys: list[str], variants: int, seed: int,
                height: int | None = None, min_height: int | None = None, max_height: int | None = None,
                canvas: bool = False) -> "SynthesisPlan":
        """Check the arguments and build the model rows: one (face, z, scale) row per (face, variant) pair.

        The randomness of every row is fixed here, so how rows are later batched changes nothing.
        """
        if isinstance(variants, bool) or not isinstance(variants, (int, np.integer)) or variants < 1:
            raise ValueError(f"variants must be an integer >= 1, not {variants!r}")
        if len(keys) != len(faces):
            raise ValueError(f"got {len(faces)} faces but {len(keys)} keys; give one key per face")
        faces = _check_faces(list(faces))
        # Validate the height arguments once, before any work.
        if faces:
            self.variant_params(keys[0], seed, 0, height, min_height, max_height)
        items = []  # (face index, k, height)
        zs, noises = [], []
        for i, key in enumerate(keys):
            for k in range(variants):
                h, z, rng = self._draw(key, seed, k, height, min_height, max_height)
                items.append((i, k, h))
                zs.append(z)
                if self._noise_shape is not None:
                    noises.append(rng.standard_normal(self._noise_shape, dtype=np.float32))
        if not items:
            return SynthesisPlan(items, {}, len(faces), int(seed), canvas)
        canvases = to_model_input(faces)
        feed = {
            "face": np.ascontiguousarray(np.repeat(canvases, variants, axis=0)),
            "z": np.stack(zs),
            "scale": np.array([[h / FACE_HEIGHT] for _, _, h in items], dtype=np.float32),
        }
        if noises:
            feed["noise"] = np.stack(noises)
        return SynthesisPlan(items, feed, len(faces), int(seed), canvas)

    def _run_rows(self, feed: dict[str, np.ndarray]) -> np.ndarray:
        (out,) = self._session.run(["lr"], feed)
        return out

    def run(self, plan: "SynthesisPlan") -> np.ndarray:
        """The model's `lr` rows of a plan: through the micro-batcher when there is one, else in
        batches of up to `max_batch` rows."""
        if not plan.items:
            return np.zeros((0, 3, FACE_HEIGHT, 96), dtype=np.float32)
        if self.batcher is not None:
            return self.batcher.submit(plan.feed).result()
        n = len(plan.items)
        outs = [self._run_rows({k: v[i:i + self.max_batch] for k, v in plan.feed.items()})
                for i in range(0, n, self.max_batch)]
        return outs[0] if len(outs) == 1 else np.concatenate(outs)

    async def run_async(self, plan: "SynthesisPlan") -> np.ndarray:
        """`run` from an event loop without blocking it (needs the micro-batcher)."""
        if self.batcher is None:
            raise RuntimeError("run_async needs micro_batch=True")
        if not plan.items:
            return np.zeros((0, 3, FACE_HEIGHT, 96), dtype=np.float32)
        return await self.batcher.submit_async(plan.feed)

    def finish(self, plan: "SynthesisPlan", out: np.ndarray) -> list[list[Variant]]:
        """Model rows -> the variants (native LR size, or the 112x96 canvas): result[i][k] is variant k of face i."""
        results: list[list[Variant]] = [[] for _ in range(plan.n_faces)]
        if not plan.items:
            return results
        for (i, k, h), rgb in zip(plan.items, from_model_output(out)):
            native = np.ascontiguousarray(rgb[:h, :lr_width_for_height(h)])  # the capture sits top-left
            image = to_canvas(native) if plan.canvas else native
            results[i].append(Variant(image=image, k=k, seed=plan.seed, height=h, width=lr_width_for_height(h)))
        return results

    def synthesize(self, faces: list[np.ndarray], *, keys: list[str], variants: int, seed: int,
                   height: int | None = None, min_height: int | None = None, max_height: int | None = None,
                   canvas: bool = False) -> list[list[Variant]]:
        """`variants` LR variants of each face; result[i][k] is variant k of faces[i].

        `faces` are uint8 RGB arrays of any size (brought to the canvas with `to_canvas`); `keys[i]` names
        face i for the randomness (the relative path in bulk runs). (face, variant) pairs are run in batches
        of up to `max_batch` (with the micro-batcher, together with other callers' rows).
        """
        plan = self.prepare(faces, keys=keys, variants=variants, seed=seed, height=height, min_height=min_height,
                            max_height=max_height, canvas=canvas)
        return self.finish(plan, self.run(plan))


@dataclass
class SynthesisPlan:
    """What `Synthesizer.prepare` made: the (face index, k, height) of every row and the onnxruntime feed."""

    items: list[tuple[int, int, int]]
    feed: dict[str, np.ndarray]
    n_faces: int
    seed: int
    canvas: bool


def _make_batcher(name: str, run, micro_batch: bool, max_batch: int, batch_wait_ms: float, batch_queue_size: int,
                  batch_queue_timeout: float | None, on_batch) -> MicroBatcher | None:
    if not micro_batch:
        return None
    return MicroBatcher(name, run, max_batch=max_batch, max_wait_s=batch_wait_ms / 1000.0, max_queue=batch_queue_size,
                        queue_timeout_s=batch_queue_timeout, on_batch=on_batch)


class Embedder:
    """Resolution-robust face embeddings: faces of any size -> L2-normalised float32 vectors."""

    def __init__(self, model_path: str | Path | None = None, providers: list[str] | None = None,
                 threads: int | None = None, max_batch: int = 64, *, micro_batch: bool = False,
                 batch_wait_ms: float = 0.0, batch_queue_size: int = 64, batch_queue_timeout: float | None = None,
                 on_batch: Callable[[int, int, float], None] | None = None, spinning: bool | None = None):
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, not {max_batch}")
        self.model_path, self._session, meta = _load_model(model_path, "embedder", "embedder", providers,
                                                                threads, spinning)
        _check_io(self._session, self.model_path, {"face"}, "embedding")
        try:
            self.model_id: str = str(meta["model_id"])
            self.dim: int = int(meta["dim"])
            self.verify_threshold: float = float(meta["verify_threshold"])
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"{self.model_path.with_suffix('.json')} lacks a valid model_id / dim / verify_threshold: {exc}") from None
        self.max_batch = max_batch
        self.providers: list[str] = self._session.get_providers()
        self.batcher = _make_batcher("face embedder", self._run_rows, micro_batch, max_batch, batch_wait_ms,
                                     batch_queue_size, batch_queue_timeout, on_batch)

    def close(self) -> None:
        """Stop the micro-batcher (after finishing its queued requests); a no-op without one."""
        if self.batcher is not None:
            self.batcher.close()

    def prepare(self, faces: list[np.ndarray]) -> np.ndarray:
        """Check the faces and bring them to the model input (float32 N x 3 x 112 x 96)."""
        faces = _check_faces(list(faces))
        if not faces:
            return np.zeros((0, 3, FACE_HEIGHT, 96), dtype=np.float32)
        return to_model_input(faces)

    def _run_rows(self, feed: dict[str, np.ndarray]) -> np.ndarray:
        (emb,) = self._session.run(["embedding"], feed)
        return emb

    def _normalized(self, out: np.ndarray) -> np.ndarray:
        # The contract says the model normalises; renormalising guards against export drift.
        out = np.array(out, dtype=np.float32, copy=True).reshape(len(out), self.dim)
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        return np.divide(out, norms, out=out, where=norms > 0).astype(np.float32, copy=False)

    def run(self, batch: np.ndarray) -> np.ndarray:
        """Embeddings of prepared faces (`prepare`): through the micro-batcher when there is one, else in
        batches of up to `max_batch`."""
        if len(batch) == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        if self.batcher is not None:
            return self._normalized(self.batcher.submit({"face": batch}).result())
        out = np.zeros((len(batch), self.dim), dtype=np.float32)
        for start in range(0, len(batch), self.max_batch):
            out[start:start + self.max_batch] = self._run_rows({"face": batch[start:start + self.max_batch]})
        return self._normalized(out)

    async def run_async(self, batch: np.ndarray, *, inline: bool = False) -> np.ndarray:
        """`run` from an event loop without blocking it (needs the micro-batcher).

        `inline=True`: when the batcher is idle and the batch is small (<= INLINE_MAX_ROWS faces), the call runs
        right here on the loop's thread instead (the API does this for a lone request: nothing else is waiting,
        and the embedder's call takes ~2 ms a face, so the loop is never held for long)."""
        if self.batcher is None:
            raise RuntimeError("run_async needs micro_batch=True")
        if len(batch) == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        if inline and len(batch) <= INLINE_MAX_ROWS:
            out = self.batcher.run_now({"face": batch})
            if out is not None:
                return self._normalized(out)
        return self._normalized(await self.batcher.submit_async({"face": batch}))

    def embed(self, faces: list[np.ndarray]) -> np.ndarray:
        """float32 N x dim, each row L2-normalised; faces are uint8 RGB of any size (>= 8 px high)."""
        return self.run(self.prepare(faces))
