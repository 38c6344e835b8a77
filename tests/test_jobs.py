"""Bulk jobs on a real Redis with real Celery worker processes: crash safety, exactly-once counting, cancellation."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from lrface.service.celery_app import make_celery
from lrface.service.jobs.lifecycle import submit_job
from lrface.service.jobs.params import JobParams, new_job_id
from lrface.service.jobs.recovery import broker_inventory
from lrface.service.jobs.store import JobStore
from lrface.service.settings import Settings
from service_helpers import (
    TEST_REDIS_URL,
    check_job_outputs,
    files_under,
    forget_namespace,
    make_faces,
    redis_or_skip,
    service_env,
    start_worker,
    unique_namespace,
    wait_for,
)

pytestmark = [pytest.mark.redis, pytest.mark.process]

VISIBILITY_TIMEOUT = 3  # seconds before a task held by a dead worker is handed out again
# seconds without progress before the workers' sweeper re-queues a chunk the broker lost (a SIGKILL between
# Redis' pop of a task and its bookkeeping as unacknowledged loses it: see tests/test_faults.py)
STALL_TIMEOUT = 3


@pytest.fixture
def bulk(tmp_path, mrgan_path, embedder_path):
    """A private namespace on the test Redis, a settings object for this process and the workers' environment."""
    client = redis_or_skip()
    prefix, queue = unique_namespace()
    overrides = {
        "LRFACE_BROKER_URL": TEST_REDIS_URL,
        "LRFACE_KEY_PREFIX": prefix,
        "LRFACE_QUEUE": queue,
        "LRFACE_BROKER_VISIBILITY_TIMEOUT": VISIBILITY_TIMEOUT,
        "LRFACE_JOB_STALL_TIMEOUT": STALL_TIMEOUT,
        "LRFACE_CHUNK_SIZE": 2,
    }
    env = service_env(tmp_path, mrgan_path, embedder_path, **overrides)
    settings = Settings(broker_url=TEST_REDIS_URL, key_prefix=prefix, queue=queue, chunk_size=2,
                        broker_visibility_timeout=VISIBILITY_TIMEOUT, job_stall_timeout=STALL_TIMEOUT,
                        data_root=tmp_path / "data",
                        jobs_root=tmp_path / "jobs", state_dir=tmp_path / "state")
    store = JobStore.from_settings(settings)
    celery = make_celery(settings)
    workers = []

    class Bulk:
        pass

    b = Bulk()
    b.tmp, b.env, b.settings, b.store, b.redis, b.queue = tmp_path, env, settings, store, client, queue

    def submit(folder: str, variants: int, seed: int, chunk_size: int = 2) -> str:
        job_id = new_job_id()
        s = settings.model_copy(update={"chunk_size": chunk_size})
        submit_job(store, s, job_id=job_id, params=JobParams(variants, seed), input_dir=settings.data_root_path / folder,
                   allowed_root=settings.data_root_path, input_label=folder,
                   enqueue=lambda jid, i, paths: celery.send_task("lrface.process_chunk", args=(jid, i, paths), queue=queue))
        return job_id

    def worker(name: str):
        w = start_worker(env, tmp_path / f"{name}.log")
        workers.append(w)
        return w

    b.submit, b.worker = submit, worker
    yield b
    for w in workers:
        w.stop()
    forget_namespace(client, prefix, queue)
    store.redis.close()


def _state(b, job_id):
    return b.store.get(job_id)


def test_job_finishes_exactly_once_after_its_worker_is_killed_mid_job(bulk):
    # Large (6x) copies of the fixtures make each chunk take a while, so the kill lands mid-job.
    sources = make_faces(bulk.tmp / "data" / "faces", 20, scale=6)
    job_id = bulk.submit("faces", variants=2, seed=11, chunk_size=2)
    assert _state(bulk, job_id)["chunks_total"] == 10

    first = bulk.worker("worker-1")
    wait_for(lambda: _state(bulk, job_id)["chunks_done"] >= 2, 90, 0.005, "two chunks to be done")
    first.kill()  # SIGKILL: no shutdown, its current task stays unacknowledged in the broker
    at_kill = _state(bulk, job_id)
    assert at_kill["chunks_done"] < at_kill["chunks_total"], "the job finished before the worker could be killed"
    assert at_kill["state"] == "running"

    bulk.worker("worker-2")
    job = wait_for(lambda: (j := _state(bulk, job_id))["state"] in ("succeeded", "failed") and j, 120, 0.2,
                   "the job to finish on the second worker")
    assert job["state"] == "succeeded", job
    assert (job["total"], job["done"], job["failed"]) == (20, 20, 0)
    assert job["chunks_done"] == job["chunks_total"] == 10
    output_dir = Path(job["output_dir"])
    assert output_dir == bulk.settings.jobs_root_path / job_id
    rows = check_job_outputs(output_dir, sources, variants=2, seed=11)
    assert len(rows) == 40


def test_cancelling_a_job_stops_its_remaining_chunks(bulk):
    make_faces(bulk.tmp / "data" / "faces", 12, scale=6)
    before_start = bulk.submit("faces", variants=2, seed=1, chunk_size=1)
    bulk.store.cancel(before_start)
    running = bulk.submit("faces", variants=2, seed=2, chunk_size=1)

    bulk.worker("worker")
    wait_for(lambda: _state(bulk, running)["chunks_done"] >= 1, 90, 0.005, "the first chunk")
    changed, state = bulk.store.cancel(running)
    assert changed and state == "cancelled"
    at_cancel = _state(bulk, running)["chunks_done"]
    # Every task is taken and answered (as a no-op) once the queue is empty and nothing is held any more.
    wait_for(lambda: not any(broker_inventory(bulk.redis, bulk.queue, {before_start, running}).values()), 60, 0.05,
             "the broker to hold no task of either job (queued or unacknowledged)")

    cancelled_early = _state(bulk, before_start)
    assert cancelled_early["state"] == "cancelled" and cancelled_early["chunks_done"] == 0
    assert files_under(Path(cancelled_early["output_dir"])) == set(), "a chunk of a cancelled job wrote files"

    job = _state(bulk, running)
    assert job["state"] == "cancelled"
    # At most the chunk that was running when the flag went up finishes; the other chunks do nothing.
    assert job["chunks_done"] <= at_cancel + 1 < job["chunks_total"]
    written = files_under(Path(job["output_dir"]))
    assert "manifest.jsonl" not in written, "a cancelled job was finalized"
    assert len(written) <= 2 * (at_cancel + 1)


def test_a_chunk_is_counted_once_however_often_it_is_recorded(bulk):
    make_faces(bulk.tmp / "data" / "faces", 4)
    job_id = bulk.submit("faces", variants=1, seed=0, chunk_size=2)
    results = [{"source": "a.png", "status": "done"}, {"source": "b.png", "status": "failed", "reason": "corrupt", "message": "x"}]
    first = bulk.store.record_chunk(job_id, 0, results)
    again = bulk.store.record_chunk(job_id, 0, results)
    assert first == (True, 1, 2) and again == (False, 1, 2)
    job = _state(bulk, job_id)
    assert (job["done"], job["failed"], job["errors_total"]) == (1, 1, 1)
    assert job["errors"] == [{"source": "b.png", "reason": "corrupt", "message": "x"}]
    # Job state is plain Redis data: another process (an API restarted meanwhile) reads the same job.
    other = JobStore.from_settings(bulk.settings)
    assert other.get(job_id)["done"] == 1
    assert json.loads(bulk.redis.hget(f"{bulk.settings.key_prefix}job:{job_id}", "params"))["variants"] == 1
