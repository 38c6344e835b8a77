"""Chunk tasks the broker lost, found and queued again by the sweeper."""
from __future__ import annotations

import base64
import json
import logging
import re
import time

from lrface.service.jobs.store import JobStore
from lrface.service.settings import Settings

log = logging.getLogger("lrface.jobs")

#
# Celery's Redis transport takes a task off the queue (BRPOP) before it records it as unacknowledged: a worker
# killed in between loses the task for good (celery/kombu#305, celery/celery#7950), and its job would stay
# "running" for ever. Tasks of dead workers that *were* recorded come back by themselves after the visibility
# timeout. So for a job without progress for `job_stall_timeout`, the sweeper takes stock of the broker (the queue
# and the unacknowledged tasks) and queues again only the chunks that are neither done nor anywhere there (and
# the finalizer when every chunk is done). Chunk tasks are idempotent, so a chunk queued twice by a race costs
# time, never correctness.

_ARGSREPR = re.compile(r"^\(\s*'([0-9a-f]{32})'\s*,\s*(\d+)?")


def _task_of(raw: str) -> tuple[str, str, int | None] | None:
    """(task name, job id, chunk index or None) of a Celery message as kombu stores it in Redis."""
    try:
        message = json.loads(raw)
        if isinstance(message, list):  # the unacked hash holds [message, exchange, routing_key]
            message = message[0]
        headers = message.get("headers") or {}
        name = headers.get("task", "")
        if not name.startswith("lrface."):
            return None
        match = _ARGSREPR.match(headers.get("argsrepr") or "")
        if match:
            return name, match.group(1), int(match.group(2)) if match.group(2) else None
        args = json.loads(base64.b64decode(message["body"]))[0]
        return name, str(args[0]), int(args[1]) if len(args) > 1 else None
    except Exception:
        return None


def broker_inventory(broker, queue: str, job_ids: set[str]) -> dict[str, set]:
    """For each of `job_ids`: the chunk indexes (and "finalize") of its tasks waiting in the queue or held
    unacknowledged by a worker."""
    found: dict[str, set] = {job_id: set() for job_id in job_ids}

    def note(raw) -> None:
        raw = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw
        if not any(job_id in raw for job_id in job_ids):
            return
        task = _task_of(raw)
        if task and task[1] in found:
            found[task[1]].add("finalize" if task[0] == "lrface.finalize_job" else task[2])

    length = broker.llen(queue)
    for start in range(0, length, 500):
        for raw in broker.lrange(queue, start, start + 499):
            note(raw)
    for _, raw in broker.hscan_iter("unacked", count=500):
        note(raw)
    return found


def recover_lost_tasks(store: JobStore, broker, settings: Settings, enqueue_chunk, enqueue_finalize,
                       now: float | None = None) -> dict[str, list]:
    """Queue again the chunk tasks (or the finalizer) of stalled active jobs that the broker no longer has.

    Returns {job id: [chunk indexes queued again, plus "finalize" when it was]} for the jobs it touched.
    """
    now = time.time() if now is None else now
    stalled = {}
    for job_id in store.redis.smembers(store.active_key):
        job = store.get(job_id, errors_limit=0)
        if job is None or job["state"] not in ("queued", "running") or store.is_cancelled(job_id):
            continue
        if now - job["updated_at"] >= settings.job_stall_timeout:
            stalled[job_id] = job
    if not stalled:
        return {}
    present = broker_inventory(broker, settings.queue, set(stalled))
    recovered: dict[str, list] = {}
    for job_id, job in stalled.items():
        done = {int(c) for c in store.redis.smembers(store.key(job_id, "chunks"))}
        missing = [c for c in range(job["chunks_total"]) if c not in done and c not in present[job_id]]
        again: list = []
        if missing:
            size = int(store.redis.hget(store.key(job_id), "chunk_size") or 0)
            sources = store.sources(job_id)
            if size < 1:  # a job stored before chunk sizes were: its chunks cannot be rebuilt
                log.warning("job %s looks stalled but its chunk size is unknown; not recovering it", job_id)
                continue
            for chunk in missing:
                enqueue_chunk(job_id, chunk, sources[chunk * size:(chunk + 1) * size])
            again += missing
        elif len(done) >= job["chunks_total"] and "finalize" not in present[job_id]:
            enqueue_finalize(job_id)
            again.append("finalize")
        store.redis.hset(store.key(job_id), "updated_at", f"{now:.3f}")  # next look after another stall period
        if again:
            store.redis.hincrby(store.key(job_id), "recovered", len(again))
            log.warning("job %s made no progress for %.0f s and the broker had lost tasks of it: queued %s again",
                        job_id, now - job["updated_at"], again)
            recovered[job_id] = again
    return recovered
