"""Micro-batching: one worker thread per model that runs the rows of concurrent requests as one model call.

Each model of the API gets one `MicroBatcher`, a bounded queue and one worker thread that takes the rows of
whatever requests are waiting (up to the model's `max_batch`, waiting up to `batch_wait_ms` for more when the
batch is not full), runs them as one onnxruntime call and hands every request its own rows back. Concurrent
requests then become a few large calls instead of many small ones that fight over the same cores. Randomness is
unaffected: each row's inputs (face, z, height) are fixed before it is queued (docs/ARCHITECTURE.md,
"Reproducible randomness"). Knows nothing of onnxruntime or faces: `run(feed)` is any function of a dict of
arrays with a leading batch axis.
"""
from __future__ import annotations

import asyncio
import collections
import threading
import time
from typing import Callable

import numpy as np


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


def make_batcher(name: str, run, micro_batch: bool, max_batch: int, batch_wait_ms: float, batch_queue_size: int,
                 batch_queue_timeout: float | None, on_batch) -> MicroBatcher | None:
    """A `MicroBatcher` from the models' keyword arguments, or None without `micro_batch`."""
    if not micro_batch:
        return None
    return MicroBatcher(name, run, max_batch=max_batch, max_wait_s=batch_wait_ms / 1000.0, max_queue=batch_queue_size,
                        queue_timeout_s=batch_queue_timeout, on_batch=on_batch)
