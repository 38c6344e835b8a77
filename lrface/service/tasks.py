"""Celery tasks of the bulk jobs: thin wrappers around `lrface.service.offline`'s augmentation steps and the job store.

Arguments are ids and relative paths, never pixels. Every task is idempotent: outputs already on disk are
skipped, a chunk's counts move only the first time it is recorded, and the finalizer rebuilds the manifest
from the files on disk, so a redelivered or retried task changes nothing.

When Redis (job state and broker) is unreachable or restarting, a task neither fails nor is dropped: it is
handed back to the broker (`Reject(requeue=True)`; while Redis is down even that fails, and the message stays
unacknowledged until the visibility timeout gives it out again). A retry would be lost instead: publishing it
fails while the broker is down, and Celery then drops the original message, leaving the job "running" for ever.
"""
from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

import redis.exceptions
from celery.exceptions import Reject
from kombu.exceptions import OperationalError

from celery import signals

from lrface.service.celery_app import app
from lrface.service.jobs.lifecycle import (clean_orphan_uploads, purge_expired_jobs, remove_job_files, remove_job_input,
                                           remove_stray_temps)
from lrface.service.jobs.params import TERMINAL_STATES, JobParams
from lrface.service.jobs.recovery import recover_lost_tasks
from lrface.service.jobs.store import JobStore, redis_client
from lrface.service.redact import error_text
from lrface.service.settings import get_settings

log = logging.getLogger("lrface.tasks")

# Redis / broker trouble that passes: the task goes back to the queue instead of failing.
TRANSIENT_ERRORS = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OperationalError)
REQUEUE_PAUSE_S = 1.0

_lock = threading.Lock()
_synthesizer = None
_embedders: dict = {}  # the worker's embedders by name (full, lite), each loaded on its first chunk
_detector = None
_store = None
# Embedding jobs: each chunk's embeddings land in <output>/.parts/<chunk>.npz (written once, atomically); the
# finalizer joins them in chunk order into embeddings.npz, so every face is in it exactly once.
PARTS_DIR = ".parts"
EMBED_GROUP = 16  # faces per model call of an embedding chunk (at most LRFACE_EMBED_MAX_BATCH), and per progress report


def get_synthesizer():
    """The worker's one Synthesizer, loaded on first use."""
    global _synthesizer
    with _lock:
        if _synthesizer is None:
            from lrface.core.synthesizer import Synthesizer

            settings = get_settings()
            _synthesizer = Synthesizer(settings.mrgan_model_path, providers=settings.onnx_providers(), threads=settings.threads,
                                       max_batch=settings.synth_max_batch, spinning=settings.worker_ort_spinning)
        return _synthesizer


def get_embedder(model: str = "full"):
    """The worker's Embedder of that name (full or lite), loaded on the first embedding chunk that needs it."""
    with _lock:
        if model not in _embedders:
            from lrface.core.embedder import Embedder

            settings = get_settings()
            _embedders[model] = Embedder(settings.embedder_source(model), providers=settings.onnx_providers(), threads=settings.threads,
                                         max_batch=settings.embed_max_batch, spinning=settings.worker_ort_spinning)
        return _embedders[model]


def get_detector():
    """The worker's face detector for embedding jobs (images not shaped like an aligned crop are aligned first,
    as `lrface embed` does), loaded when an image first needs it."""
    global _detector
    with _lock:
        if _detector is None:
            from lrface.core.faces import default_detector

            settings = get_settings()
            _detector = default_detector(providers=settings.onnx_providers(), threads=settings.threads)
        return _detector


def get_store() -> JobStore:
    global _store
    with _lock:
        if _store is None:
            _store = JobStore.from_settings(get_settings())
        return _store


def _params(job: dict) -> JobParams:
    return JobParams.from_dict({"kind": job.get("kind", "augment"), **job["params"]})


def enqueue_chunk(job_id: str, chunk_index: int, rel_paths: list[str]) -> None:
    process_chunk.apply_async(args=(job_id, chunk_index, rel_paths), queue=get_settings().queue)


def _requeue(job_id: str, what: str, exc: Exception) -> Reject:
    log.warning("%s of job %s: Redis unavailable (%s: %s); handing the task back to the queue",
                what, job_id, type(exc).__name__, exc)
    # Not straight back: with the broker up and the job-state Redis (LRFACE_REDIS_URL) down, the task would
    # come back at once and spin.
    time.sleep(REQUEUE_PAUSE_S)
    return Reject(f"{type(exc).__name__}: {exc}", requeue=True)


def _retry(task, exc: Exception):
    """`task.retry`, but a retry that cannot be published hands the message back instead of dropping it."""
    try:
        return task.retry(exc=exc, countdown=1 + task.request.retries)
    except Reject as rejected:
        return Reject(rejected.reason, requeue=True)


@app.task(bind=True, name="lrface.process_chunk", acks_late=True, reject_on_worker_lost=True)
def process_chunk(self, job_id: str, chunk_index: int, rel_paths: list[str]) -> str:
    """Write the variants of one chunk of a job's sources, count it once, and finalize when it is the last."""
    try:
        return _process_chunk(self, job_id, chunk_index, rel_paths)
    except TRANSIENT_ERRORS as exc:
        raise _requeue(job_id, f"chunk {chunk_index}", exc) from None


def _process_chunk(self, job_id: str, chunk_index: int, rel_paths: list[str]) -> str:
    store = get_store()
    job = store.get(job_id, errors_limit=0)
    if job is None:
        log.warning("chunk %s of unknown job %s: dropped", chunk_index, job_id)
        return "unknown"
    if store.is_cancelled(job_id) or job["state"] in TERMINAL_STATES:
        return "skipped"
    params = _params(job)
    try:
        if params.kind == "embed":
            results = _embed_chunk(store, job, chunk_index, rel_paths, params.model)
        else:
            results = _augment_chunk(store, job, params, chunk_index, rel_paths)
    except TRANSIENT_ERRORS:
        raise
    except Exception as exc:
        if self.request.retries < get_settings().chunk_max_retries:
            log.warning("chunk %s of job %s failed (%s); retrying", chunk_index, job_id, exc)
            raise _retry(self, exc)
        log.exception("chunk %s of job %s failed for good", chunk_index, job_id)
        store.fail(job_id, f"chunk {chunk_index} failed: {error_text(exc, get_settings())}")
        remove_job_input(get_settings(), job_id)
        return "failed"
    if results is None:
        return _stopped(store, job_id)
    added, chunks_done, chunks_total = store.record_chunk(job_id, chunk_index, results)
    if added is None:  # purged while this chunk ran
        return _stopped(store, job_id)
    if chunks_done >= chunks_total:
        # Also when this chunk was already counted (a redelivery after a crash between counting and this
        # line): finalizing is idempotent, and otherwise nobody would.
        finalize_job.apply_async(args=(job_id,), queue=get_settings().queue)
    return "done"


def _stopped(store: JobStore, job_id: str) -> str:
    """A chunk that stopped because its job was cancelled; when the job was purged meanwhile, the files this
    chunk may have written after the purge are removed too."""
    if not store.exists(job_id):
        remove_job_files(get_settings(), job_id)
        return "purged"
    return "cancelled"


def _progress_counts(results: list[dict]) -> tuple[int, int]:
    failed = sum(r.get("status") == "failed" for r in results)
    return len(results) - failed, failed


def _augment_chunk(store: JobStore, job: dict, params: JobParams, chunk_index: int,
                   rel_paths: list[str]) -> list[dict] | None:
    """The variants of one chunk (None when the job was cancelled meanwhile)."""
    from lrface.core.augment import augment_sources

    job_id = job["job_id"]
    synth = get_synthesizer()
    store.mark_running(job_id, synth.model_id)
    results: list[dict] = []
    # Between groups of sources the cancel flag is read again and the images done so far are reported
    # (also a heartbeat: a long chunk is progress, not a stall); a group is one model batch.
    group = max(1, synth.max_batch // params.variants)
    for start in range(0, len(rel_paths), group):
        if store.is_cancelled(job_id):
            return None
        results += augment_sources(synth, job["input_dir"], job["output_dir"], rel_paths[start:start + group], params)
        if start + group < len(rel_paths):
            store.report_progress(job_id, chunk_index, *_progress_counts(results))
    return results


def _part_path(output_dir: str | Path, chunk_index: int) -> Path:
    return Path(output_dir) / PARTS_DIR / f"{chunk_index:06d}.npz"


def _embed_chunk(store: JobStore, job: dict, chunk_index: int, rel_paths: list[str],
                 model: str = "full") -> list[dict] | None:
    """The embeddings of one chunk, written once to its part file; a redelivered chunk reads the part back."""
    import io
    import json

    import numpy as np

    from lrface.core.embed import embed_sources
    from lrface.core.files import write_atomic

    job_id = job["job_id"]
    part = _part_path(job["output_dir"], chunk_index)
    embedder = get_embedder(model)
    store.mark_running(job_id, embedder.model_id)
    if part.is_file():
        with np.load(part) as npz:
            paths = [str(p) for p in npz["paths"]]
            failures = [json.loads(f) for f in npz["failures"]]
        return [{"source": p, "status": "done"} for p in paths] + failures
    paths: list[str] = []
    blocks: list[np.ndarray] = []
    failures = []
    group = max(1, min(EMBED_GROUP, embedder.max_batch))
    for start in range(0, len(rel_paths), group):
        if store.is_cancelled(job_id):
            return None
        # (The default alignment, as `lrface embed` without --align: the same faces, the same embeddings.)
        done, emb, failed = embed_sources(embedder, job["input_dir"], rel_paths[start:start + group], group,
                                          detector=get_detector())
        paths += done
        blocks.append(emb)
        failures += failed
        if start + group < len(rel_paths):
            store.report_progress(job_id, chunk_index, len(paths), len(failures))
    embeddings = np.concatenate(blocks) if blocks else np.zeros((0, embedder.dim), dtype=np.float32)
    buf = io.BytesIO()
    np.savez(buf, paths=np.array(paths, dtype=np.str_), embeddings=embeddings.astype(np.float32),
             failures=np.array([json.dumps(f) for f in failures], dtype=np.str_))
    write_atomic(part, buf.getvalue())
    return [{"source": p, "status": "done"} for p in paths] + failures


@app.task(bind=True, name="lrface.finalize_job", acks_late=True, reject_on_worker_lost=True)
def finalize_job(self, job_id: str) -> str:
    """Rebuild the manifest (and errors.jsonl) from the outputs on disk, then mark the job finished."""
    try:
        return _finalize_job(self, job_id)
    except TRANSIENT_ERRORS as exc:
        raise _requeue(job_id, "finalizing", exc) from None


def _finalize_job(self, job_id: str) -> str:
    from lrface.core.augment import write_errors, write_manifest

    store = get_store()
    job = store.get(job_id, errors_limit=0)
    if job is None or job["state"] in TERMINAL_STATES or store.is_cancelled(job_id):
        return "skipped"
    if job["chunks_done"] < job["chunks_total"]:
        return "pending"
    params = _params(job)
    output_dir = Path(job["output_dir"])
    try:
        remove_stray_temps(output_dir)
        write_errors(output_dir, store.failures(job_id))
        if params.kind == "embed":
            _join_embeddings(output_dir, job["chunks_total"], job.get("model_id"))
        else:
            write_manifest(get_synthesizer(), output_dir, store.sources(job_id), params)
    except TRANSIENT_ERRORS:
        raise
    except Exception as exc:
        if self.request.retries < get_settings().chunk_max_retries:
            raise _retry(self, exc)
        log.exception("finalizing job %s failed", job_id)
        store.fail(job_id, f"writing the {'embeddings' if params.kind == 'embed' else 'manifest'} failed: "
                           f"{error_text(exc, get_settings())}")
        remove_job_input(get_settings(), job_id)
        return "failed"
    if job["done"] == 0 and job["failed"] > 0:
        store.redis.hset(store.key(job_id), "error", "no source could be processed")
        changed, state = store.transition(job_id, "failed", ("queued", "running"))
    else:
        changed, state = store.transition(job_id, "succeeded", ("queued", "running"))
    _settle(output_dir, job_id, changed, state)
    return "finished"


def _settle(output_dir: Path, job_id: str, changed: bool, state: str) -> None:
    """After the finalizer's last step. A DELETE that cancelled the job while the manifest was being written won
    the race (the job is `cancelled`): the manifest and errors.jsonl this finalizer wrote go, so a cancelled job
    never has a manifest, whatever the timing (its outputs written so far stay, as for any cancelled job). The
    job's uploaded input is not needed any more either way."""
    from lrface.core.files import ERRORS_NAME, MANIFEST_NAME

    if not changed and state == "cancelled":
        for name in (MANIFEST_NAME, ERRORS_NAME):
            (output_dir / name).unlink(missing_ok=True)
    if state in TERMINAL_STATES:
        remove_job_input(get_settings(), job_id)


def _join_embeddings(output_dir: Path, chunks_total: int, model_id: str | None = None) -> None:
    """embeddings.npz (and the manifest: one line per row) from the chunks' part files, in chunk order; then
    the parts go. Idempotent: when the parts are gone, a previous run wrote the file."""
    import shutil

    from lrface.core.embed import write_embeddings_from_parts
    from lrface.core.files import EMBEDDINGS_NAME, MANIFEST_NAME, write_jsonl

    import numpy as np

    parts = [_part_path(output_dir, i) for i in range(chunks_total)]
    missing = [p.name for p in parts if not p.is_file()]
    if not missing:
        paths = write_embeddings_from_parts(output_dir / EMBEDDINGS_NAME, parts, model_id)
    elif (output_dir / EMBEDDINGS_NAME).is_file():
        # A previous run wrote the whole file (it is renamed into place complete) and was removing the parts.
        with np.load(output_dir / EMBEDDINGS_NAME) as npz:
            paths = [str(p) for p in npz["paths"]]
    else:
        raise RuntimeError(f"the embeddings of {len(missing)} chunks are missing ({', '.join(missing[:5])})")
    write_jsonl(output_dir / MANIFEST_NAME, ({"source": p, "row": i} for i, p in enumerate(paths)))
    shutil.rmtree(output_dir / PARTS_DIR, ignore_errors=True)


# -- the sweeper: chunk tasks the broker lost ----------------------------------------------------------------

def sweep_once() -> dict:
    """One pass of `lrface.service.jobs.recovery.recover_lost_tasks`, by at most one worker at a time (a Redis lock)."""
    settings = get_settings()
    store = get_store()
    interval = sweep_interval(settings)
    if not store.redis.set(f"{settings.key_prefix}sweeper", "1", nx=True, ex=max(1, int(interval))):
        return {}
    try:
        purge_expired_jobs(store, settings)
        clean_orphan_uploads(store, settings, min_age_s=orphan_upload_age(settings))
    except TRANSIENT_ERRORS:
        raise
    except Exception as exc:
        log.warning("purging expired jobs failed: %s: %s", type(exc).__name__, exc)
    broker = redis_client(settings.broker_url or "redis://127.0.0.1:6379/0", timeout=10.0)
    try:
        return recover_lost_tasks(
            store, broker, settings,
            enqueue_chunk=enqueue_chunk,
            enqueue_finalize=lambda job_id: finalize_job.apply_async(args=(job_id,), queue=settings.queue))
    finally:
        broker.close()


def orphan_upload_age(settings) -> float:
    """How old an upload folder without a job must be before it counts as orphaned while API processes may be
    receiving or extracting uploads: longer than an upload may take, plus an hour for its extraction."""
    return settings.upload_timeout + 3600.0


def sweep_interval(settings) -> float:
    return max(1.0, min(60.0, settings.job_stall_timeout / 3.0))


def _sweep_forever(stop: threading.Event) -> None:
    interval = sweep_interval(get_settings())
    while not stop.wait(interval):
        try:
            sweep_once()
        except Exception as exc:  # Redis down and the like: try again next time
            log.warning("sweeping for lost tasks failed: %s: %s", type(exc).__name__, exc)


_sweeper_stop = threading.Event()


def _preload() -> None:
    """Load the MR-GAN before the first task arrives, so the first chunk of the first job does not wait for it."""
    try:
        log.info("MR-GAN %s loaded", get_synthesizer().model_id)
    except Exception as exc:  # missing weights and the like: the chunk tasks report it (and retry loading)
        log.warning("could not preload the MR-GAN: %s: %s", type(exc).__name__, exc)


@signals.worker_process_init.connect
def _preload_in_pool_process(**kwargs) -> None:
    # Sent in each prefork pool process just after the fork (load there, never in the parent: an onnxruntime
    # session's threads do not survive a fork), and by the solo pool as it starts.
    _preload()


@signals.worker_ready.connect
def _start_sweeper(sender=None, **kwargs) -> None:
    threading.Thread(target=_sweep_forever, args=(_sweeper_stop,), name="lrface-sweeper", daemon=True).start()
    pool = getattr(sender, "pool", None)
    if pool is not None and type(pool).__module__ == "celery.concurrency.thread":
        _preload()  # the thread pool sends no worker_process_init; its tasks run in this process


@signals.worker_shutdown.connect
def _stop_sweeper(**kwargs) -> None:
    _sweeper_stop.set()

