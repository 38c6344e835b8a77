"""Faults with real processes and a real Redis: workers SIGKILLed at random points, Redis restarted mid-job,
SIGTERM to the API and to a worker, and job inputs that cannot be read.

What each test shows:
- 20 SIGKILLs of workers over a seeded schedule: every job still finishes with exactly one output per
  (image, variant) and a manifest that matches the files on disk (no temp file left behind).
- SIGKILLs of workers during an embedding job: embeddings.npz still has exactly one embedding per face, the
  same as `lrface embed` gives.
- Redis (job state + broker, append-only file on) restarted in the middle of a job: the job *completes* once
  Redis is back. Chunk tasks that hit the outage are handed back to the queue (lrface/service/tasks.py,
  TRANSIENT_ERRORS), and a message whose worker could not even do that stays unacknowledged in Redis and is
  given out again after the visibility timeout; since every task is idempotent, nothing is lost and nothing is
  counted twice. While Redis is down the API answers 503 `jobs_unavailable` with Retry-After, not 500.
- SIGTERM to `lrface serve`: requests in flight (even halfway through sending their body) are answered in full,
  new connections are refused, the process exits 0, and no upload temp file is left.
- SIGTERM to a worker: the chunk it is running finishes and is counted, no half-written file is left, the
  other chunks stay queued for the next worker.
- A job over a folder with truncated, empty, non-image, dangling-link, FIFO, device-file, bomb, tiny and
  non-UTF-8-named files: the good images are processed, each bad one is listed with its reason.
"""
from __future__ import annotations

import json
import os
import random
import shutil
import signal
import socket
import stat
import subprocess
import time
import uuid
import zipfile
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from lrface.service.celery_app import make_celery
from lrface.service.jobs.lifecycle import submit_job
from lrface.service.jobs.params import JobParams, new_job_id
from lrface.service.jobs.store import JobStore
from lrface.service.settings import Settings
from service_helpers import (
    HR_FACES,
    TEST_REDIS_URL,
    bomb_png,
    check_job_outputs,
    files_under,
    forget_namespace,
    free_port,
    make_faces,
    png_bytes,
    redis_or_skip,
    serve,
    service_env,
    start_worker,
    unique_namespace,
    wait_for,
)

pytestmark = [pytest.mark.redis, pytest.mark.process, pytest.mark.slow]

VISIBILITY_TIMEOUT = 2  # seconds before a task held by a dead worker is handed out again
STALL_TIMEOUT = 3  # seconds without progress before the workers' sweeper looks for tasks the broker lost
FINISHED = ("succeeded", "failed", "cancelled")


class Harness:
    """A private namespace (key prefix + queue) on a Redis, this process's job store, and real worker processes."""

    def __init__(self, tmp: Path, mrgan_path: Path, embedder_path: Path, url: str, client, state_url: str | None = None,
                 stall_timeout: float = STALL_TIMEOUT):
        self.tmp, self.url, self.redis = tmp, url, client
        self.prefix, self.queue = unique_namespace()
        extra = {"LRFACE_REDIS_URL": state_url} if state_url else {}
        self.env = service_env(tmp, mrgan_path, embedder_path, LRFACE_BROKER_URL=url, LRFACE_KEY_PREFIX=self.prefix,
                               LRFACE_QUEUE=self.queue, LRFACE_BROKER_VISIBILITY_TIMEOUT=VISIBILITY_TIMEOUT,
                               LRFACE_JOB_STALL_TIMEOUT=stall_timeout, **extra)
        self.settings = Settings(broker_url=url, redis_url=state_url, key_prefix=self.prefix, queue=self.queue,
                                 broker_visibility_timeout=VISIBILITY_TIMEOUT, job_stall_timeout=stall_timeout,
                                 data_root=tmp / "data", jobs_root=tmp / "jobs", state_dir=tmp / "state")
        self.store = JobStore.from_settings(self.settings)
        self.celery = make_celery(self.settings)
        self.workers = []

    def submit(self, folder: str, variants: int, seed: int, chunk_size: int, lose: tuple[int, ...] = (),
               params: JobParams | None = None) -> str:
        """Submit a job; the chunk tasks whose index is in `lose` are never sent (as if the broker lost them)."""
        job_id = new_job_id()
        settings = self.settings.model_copy(update={"chunk_size": chunk_size})

        def enqueue(jid, i, paths):
            if i not in lose:
                self.celery.send_task("lrface.process_chunk", args=(jid, i, paths), queue=self.queue)

        submit_job(self.store, settings, job_id=job_id, params=params or JobParams(variants, seed),
                   input_dir=self.settings.data_root_path / folder, allowed_root=self.settings.data_root_path,
                   input_label=folder, enqueue=enqueue)
        return job_id

    def worker(self, name: str):
        w = start_worker(self.env, self.tmp / f"{name}.log")
        self.workers.append(w)
        return w

    def job(self, job_id: str) -> dict:
        return self.store.get(job_id)

    def wait_finished(self, job_id: str, timeout: float) -> dict:
        def finished():
            job = self.job(job_id)
            return job if job["state"] in FINISHED else None

        try:
            return wait_for(finished, timeout, 0.1, f"job {job_id} to finish")
        except AssertionError:
            logs = "\n".join(f"--- {w.log_path.name}\n{w.log_tail(1500)}" for w in self.workers[-2:])
            raise AssertionError(f"job {job_id} did not finish: {self.job(job_id)}\n{logs}") from None

    def close(self) -> None:
        for w in self.workers:
            w.stop(timeout=10)
        try:
            forget_namespace(self.redis, self.prefix, self.queue)
            if self.settings.redis_url:  # job state in a Redis of its own
                forget_namespace(self.store.redis, self.prefix, self.queue)
        finally:
            self.store.redis.close()


@pytest.fixture
def harness(tmp_path, mrgan_path, embedder_path):
    client = redis_or_skip()
    h = Harness(tmp_path, mrgan_path, embedder_path, TEST_REDIS_URL, client)
    yield h
    h.close()


def _temp_files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob("*.tmp"))


# -- 1. SIGKILL at random points, 20 times ---------------------------------------------------------------------

KILLS = 20
KILL_SCHEDULE_SEED = 20240606
IMAGES_PER_JOB = 16


def test_jobs_survive_twenty_sigkills_at_random_points(harness):
    """Each round starts a worker, lets it get going on the current job, and SIGKILLs it after a seeded random
    delay: mid-read, mid-model-run, mid-write (temp files), between counting a chunk and acknowledging it, or
    while finalizing. A new job is submitted whenever the previous one is complete, so every kill hits a job."""
    rng = random.Random(KILL_SCHEDULE_SEED)
    sources = make_faces(harness.tmp / "data" / "faces", IMAGES_PER_JOB, scale=3)
    jobs: dict[str, int] = {}  # job id -> its seed

    def submit() -> str:
        seed = len(jobs) + 1
        job_id = harness.submit("faces", variants=2, seed=seed, chunk_size=1)
        jobs[job_id] = seed
        return job_id

    def progress() -> int:
        return sum(harness.job(j)["chunks_done"] + (harness.job(j)["state"] in FINISHED) for j in jobs)

    current = submit()
    mid_job = 0
    for round_ in range(KILLS):
        job = harness.job(current)
        if job["state"] in FINISHED or job["chunks_done"] == job["chunks_total"]:
            current = submit()
        before = progress()
        worker = harness.worker(f"worker-{round_:02d}")
        # The worker is "in the job" once it has moved anything on (a chunk counted or a job finalized); a chunk
        # left unacknowledged by the previous kill comes back only after the visibility timeout.
        try:
            wait_for(lambda: progress() > before, 30 + VISIBILITY_TIMEOUT, 0.005, f"worker {round_} to make progress")
        except AssertionError:
            states = {j: (harness.job(j)["state"], harness.job(j)["chunks_done"]) for j in jobs}
            raise AssertionError(f"round {round_}: no progress; jobs {states}, queued {harness.redis.llen(harness.queue)}, "
                                 f"unacked {harness.redis.hlen('unacked')}, mutex ttl {harness.redis.ttl('unacked_mutex')}"
                                 f"\n{worker.log_tail(1500)}") from None
        time.sleep(rng.uniform(0.0, 0.25))
        worker.kill()  # SIGKILL
        job = harness.job(current)
        mid_job += job["state"] not in FINISHED and job["chunks_done"] < job["chunks_total"]

    harness.worker("worker-final")
    for job_id, seed in jobs.items():
        job = harness.wait_finished(job_id, 30 + 2 * VISIBILITY_TIMEOUT)
        assert job["state"] == "succeeded", job
        assert (job["total"], job["done"], job["failed"]) == (IMAGES_PER_JOB, IMAGES_PER_JOB, 0), job
        assert job["chunks_done"] == job["chunks_total"] == IMAGES_PER_JOB
        output_dir = Path(job["output_dir"])
        assert not _temp_files(output_dir)
        check_job_outputs(output_dir, sources, variants=2, seed=seed)
    # Each job was counted as finished exactly once, however often its finalizer ran.
    assert harness.store.stats()["succeeded"] == len(jobs)
    assert mid_job >= KILLS // 2, f"only {mid_job} of {KILLS} kills landed while a job was running"


EMBED_KILLS = 4
EMBED_FACES = 32


def test_an_embedding_job_gives_one_embedding_per_face_after_sigkills(harness, embedder_path):
    """Workers SIGKILLed at seeded random points of an embedding job (mid-read, mid-model-run, mid-write of a
    chunk's part file, between counting and acknowledging, while joining the parts): the finished job's
    embeddings.npz has every face exactly once, in `lrface embed`'s order, with its vectors."""
    from lrface.service.offline import main_embed

    rng = random.Random(KILL_SCHEDULE_SEED + 1)
    folder = harness.tmp / "data" / "faces"
    sources = make_faces(folder, EMBED_FACES, scale=5)
    job_id = harness.submit("faces", variants=1, seed=0, chunk_size=2, params=JobParams.embedding())

    def progress() -> int:
        job = harness.job(job_id)
        return job["chunks_done"] + (job["state"] in FINISHED)

    mid_job = 0
    for round_ in range(EMBED_KILLS):
        if harness.job(job_id)["state"] in FINISHED:
            break
        before = progress()
        worker = harness.worker(f"worker-{round_}")
        # (a worker's start, loading both models, takes long on a busy machine)
        wait_for(lambda: progress() > before, 90 + VISIBILITY_TIMEOUT, 0.005, f"worker {round_} to make progress")
        time.sleep(rng.uniform(0.0, 0.25))
        worker.kill()  # SIGKILL
        job = harness.job(job_id)
        mid_job += job["state"] not in FINISHED and job["chunks_done"] < job["chunks_total"]
    assert mid_job >= EMBED_KILLS // 2, f"only {mid_job} kills landed while the job was running"

    harness.worker("worker-final")
    job = harness.wait_finished(job_id, 120 + 2 * VISIBILITY_TIMEOUT)
    assert job["state"] == "succeeded", job
    assert (job["total"], job["done"], job["failed"]) == (EMBED_FACES, EMBED_FACES, 0), job
    assert job["chunks_done"] == job["chunks_total"] == EMBED_FACES // 2
    output_dir = Path(job["output_dir"])
    assert sorted(files_under(output_dir)) == ["embeddings.npz", "manifest.jsonl"]  # no part, no temp file
    with np.load(output_dir / "embeddings.npz") as npz:
        paths, embeddings = list(npz["paths"]), npz["embeddings"]
    assert paths == sources  # each face once, in order
    assert main_embed([str(folder), "--out", str(harness.tmp / "cli.npz"), "--model", str(embedder_path)]) == 0
    with np.load(harness.tmp / "cli.npz") as npz:
        assert list(npz["paths"]) == paths
        np.testing.assert_allclose(embeddings, npz["embeddings"], atol=1e-5)
    rows = [json.loads(line) for line in (output_dir / "manifest.jsonl").read_text().splitlines()]
    assert rows == [{"source": p, "row": i} for i, p in enumerate(sources)]
    assert harness.store.stats()["succeeded"] == 1


def test_chunk_tasks_the_broker_lost_are_queued_again(harness):
    """A worker killed right after taking a task off the Redis queue (BRPOP) but before recording it as
    unacknowledged loses that task for good (celery/kombu#305); the sweeper queues such chunks again."""
    sources = make_faces(harness.tmp / "data" / "faces", 6)
    job_id = harness.submit("faces", variants=2, seed=4, chunk_size=2, lose=(1,))
    harness.worker("worker")
    job = harness.wait_finished(job_id, 30 + 3 * STALL_TIMEOUT)
    assert job["state"] == "succeeded" and job["chunks_done"] == 3, job
    assert harness.redis.hget(f"{harness.prefix}job:{job_id}", "recovered") == "1"
    check_job_outputs(Path(job["output_dir"]), sources, variants=2, seed=4)


def test_a_lost_finalizer_is_queued_again_and_nothing_present_is_duplicated(harness):
    from lrface.service.jobs.recovery import recover_lost_tasks

    make_faces(harness.tmp / "data" / "faces", 4)
    waiting = harness.submit("faces", variants=1, seed=1, chunk_size=2)  # both chunk tasks wait in the queue
    finished = harness.submit("faces", variants=1, seed=1, chunk_size=2, lose=(0, 1))
    for chunk in (0, 1):  # every chunk done, but the finalizer's task is gone
        harness.store.record_chunk(finished, chunk, [{"source": "x", "status": "done"}])
    chunks, finals = [], []
    later = time.time() + 10 * STALL_TIMEOUT
    recovered = recover_lost_tasks(harness.store, harness.redis, harness.settings,
                                   enqueue_chunk=lambda *a: chunks.append(a), enqueue_finalize=finals.append, now=later)
    assert recovered == {finished: ["finalize"]} and finals == [finished] and chunks == []
    assert harness.redis.llen(harness.queue) == 2, "the waiting job's tasks were left alone"
    # Just checked: not looked at again before another stall period has passed.
    assert recover_lost_tasks(harness.store, harness.redis, harness.settings, enqueue_chunk=chunks.append,
                              enqueue_finalize=finals.append, now=later + 1) == {}
    assert harness.job(waiting)["state"] == "queued"


# -- 2. Redis restarted in the middle of a job -----------------------------------------------------------------

def _redis_server_binary() -> str:
    found = shutil.which("redis-server")
    if found:
        return found
    from lrface.service.server import redis_server_executable

    return redis_server_executable()


class PrivateRedis:
    """A redis-server of this test only, with the append-only file on, that can be stopped and started again."""

    def __init__(self, folder: Path):
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        cmd = [_redis_server_binary(), "--bind", "127.0.0.1", "--port", str(self.port), "--dir", str(self.folder),
               "--appendonly", "yes", "--appendfsync", "always", "--save", "", "--daemonize", "no",
               "--logfile", str(self.folder / "redis.log")]
        self.proc = subprocess.Popen(cmd)
        import redis

        client = redis.Redis(host="127.0.0.1", port=self.port, socket_connect_timeout=0.5)

        def answers():
            if self.proc.poll() is not None:
                raise AssertionError(f"redis-server exited: {(self.folder / 'redis.log').read_text()[-2000:]}")
            try:
                return client.ping()
            except Exception:
                return False

        wait_for(answers, 20, 0.05, "the private redis-server to answer")
        client.close()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()  # SIGTERM: redis-server flushes its append-only file and exits
            self.proc.wait(20)


OUTAGE_S = 6.0


@pytest.fixture
def private_redis(tmp_path):
    redis_or_skip()  # (the shared server's presence says the machine is set up for these tests)
    server = PrivateRedis(tmp_path / "redis")
    server.start()
    yield server
    server.stop()


@pytest.mark.parametrize("topology", ["broker-and-state", "state-only"])
def test_a_job_completes_after_redis_restarts_mid_job(tmp_path, mrgan_path, embedder_path, private_redis, topology):
    """broker-and-state: one Redis for the broker and the job state (the default) is restarted.
    state-only: the job state has its own Redis (LRFACE_REDIS_URL), which is restarted while the broker stays up.
    Before the fix in lrface/service/tasks.py the second lost chunks for good: a task that met the outage failed, Celery
    acknowledged it (the broker was up), and the job stayed "running" for ever."""
    import redis
    from fastapi.testclient import TestClient

    from lrface.service.api import create_app

    if topology == "broker-and-state":
        client = redis.Redis.from_url(private_redis.url, decode_responses=True)
        h = Harness(tmp_path, mrgan_path, embedder_path, private_redis.url, client)
    else:
        client = redis_or_skip()
        h = Harness(tmp_path, mrgan_path, embedder_path, TEST_REDIS_URL, client, state_url=private_redis.url)
    try:
        sources = make_faces(tmp_path / "data" / "faces", 24, scale=4)
        job_id = h.submit("faces", variants=2, seed=5, chunk_size=2)
        h.worker("worker")
        wait_for(lambda: h.job(job_id)["chunks_done"] >= 2, 60, 0.005, "two chunks")

        private_redis.stop()
        at_outage = time.monotonic()
        # While Redis is down the API says so (503 + Retry-After), it does not fail with a 500.
        app = create_app(h.settings.model_copy(update={"load_models_on_startup": False}))
        with TestClient(app) as api:
            r = api.get(f"/v1/jobs/{job_id}")
            assert r.status_code == 503, r.text
            assert r.json()["error"] == "jobs_unavailable" and int(r.headers["retry-after"]) >= 1
            # Longer than redis-py's own retries of a failed command (10, backing off up to ~4 s in all), so the
            # worker's tasks do meet the outage.
            time.sleep(max(0.0, OUTAGE_S - (time.monotonic() - at_outage)))
            private_redis.start()
            assert api.get(f"/v1/jobs/{job_id}").status_code == 200

        job = h.wait_finished(job_id, 60)
        assert job["state"] == "succeeded", job
        assert (job["total"], job["done"], job["failed"]) == (24, 24, 0)
        assert job["chunks_done"] == job["chunks_total"] == 12
        check_job_outputs(Path(job["output_dir"]), sources, variants=2, seed=5)
    finally:
        h.close()
        client.close()


# -- 3. SIGTERM to the API and to a worker ---------------------------------------------------------------------

def _multipart(fields: dict[str, str], files: dict[str, tuple[str, bytes, str]]) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    parts = []
    for name, value in fields.items():
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode())
    for name, (filename, data, media) in files.items():
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; filename="{filename}"\r\n'
                     f'Content-Type: {media}\r\n\r\n'.encode() + data + b"\r\n")
    parts.append(f"--{boundary}--\r\n".encode())
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"


class HalfSentRequest:
    """A POST whose headers and first half of the body are on the wire; `finish()` sends the rest and reads the
    whole response (status, JSON body); `read()` only reads it."""

    def __init__(self, base_url: str, path: str, body: bytes, content_type: str):
        host, port = base_url.removeprefix("http://").split(":")
        self.sock = socket.create_connection((host, int(port)), timeout=30)
        head = (f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: {content_type}\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode()
        self.rest = body[len(body) // 2:]
        self.sock.sendall(head + body[:len(body) // 2])

    def finish(self) -> tuple[int, dict]:
        self.sock.sendall(self.rest)
        return self.read()

    def read(self) -> tuple[int, dict]:
        data = b""
        while chunk := self.sock.recv(65536):
            data += chunk
        self.sock.close()
        head, _, body = data.partition(b"\r\n\r\n")
        status = int(head.split()[1])
        if b"transfer-encoding: chunked" in head.lower():
            body = _dechunk(body)
        return status, json.loads(body)


def _dechunk(body: bytes) -> bytes:
    out = b""
    while body:
        size_line, _, body = body.partition(b"\r\n")
        size = int(size_line, 16)
        if size == 0:
            break
        out, body = out + body[:size], body[size + 2:]
    return out


def test_sigterm_to_the_api_finishes_requests_in_flight(tmp_path, mrgan_path, embedder_path):
    client = redis_or_skip()
    prefix, queue = unique_namespace()
    env = service_env(tmp_path, mrgan_path, embedder_path, LRFACE_BROKER_URL=TEST_REDIS_URL, LRFACE_KEY_PREFIX=prefix,
                      LRFACE_QUEUE=queue)
    server = serve(env, tmp_path)
    try:
        face = HR_FACES[0]
        synth_body, synth_type = _multipart({"variants": "3", "seed": "1"}, {"image": (face.name, face.read_bytes(), "image/jpeg")})
        archive = _zip_of_faces()  # (an archive upload in flight: its temp file must not be left behind)
        job_body, job_type = _multipart({"variants": "1"}, {"archive": ("faces.zip", archive, "application/zip")})
        in_flight = [HalfSentRequest(server.base_url, "/v1/synthesize", synth_body, synth_type),
                     HalfSentRequest(server.base_url, "/v1/jobs", job_body, job_type)]
        time.sleep(0.5)  # the server has read the headers and started on the bodies
        server.proc.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        # No new connections are taken while shutting down ...
        with pytest.raises(httpx.HTTPError):
            httpx.get(server.base_url + "/healthz", timeout=2)
        # ... but the requests in flight are served in full.
        (s1, synth), (s2, job) = [r.finish() for r in in_flight]
        assert s1 == 200 and len(synth["variants"]) == 3, synth
        assert s2 == 202 and job["counts"]["total"] == 3, job
        assert server.proc.wait(20) == 0
        uploads = tmp_path / "jobs" / "_uploads"
        assert not list(uploads.glob("*.upload")), "an upload temp file was left behind"
        assert {p.name for p in uploads.iterdir()} == {job["job_id"]}
    finally:
        server.stop()
        forget_namespace(client, prefix, queue)


def _zip_of_faces() -> bytes:
    import io

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for path in HR_FACES[:3]:
            zf.write(path, f"people/{path.name}")
    return buf.getvalue()


def test_sigterm_to_a_worker_lets_its_current_chunk_finish(harness):
    # Big inputs in big chunks: reading a chunk's sources takes long enough to signal the worker during it.
    sources = make_faces(harness.tmp / "data" / "faces", 24, scale=6)
    job_id = harness.submit("faces", variants=2, seed=3, chunk_size=12)
    worker = harness.worker("worker-1")
    # mark_running happens as the first chunk starts, before its sources are read.
    wait_for(lambda: harness.job(job_id)["state"] == "running", 60, 0.002, "the first chunk to start")
    assert harness.job(job_id)["chunks_done"] == 0
    worker.proc.send_signal(signal.SIGTERM)
    assert worker.proc.wait(30) == 0, worker.log_tail()

    job = harness.job(job_id)
    assert job["chunks_done"] == 1 and job["done"] == 12 and job["state"] == "running", job
    output_dir = Path(job["output_dir"])
    assert not _temp_files(output_dir), "a half-written file was left behind"
    written = files_under(output_dir)
    assert len(written) == 24  # 12 sources x 2 variants, each a complete PNG
    for name in written:
        with Image.open(output_dir / name) as im:
            im.load()
    assert harness.redis.llen(harness.queue) == 1, "the job's other chunk should still be queued"

    harness.worker("worker-2")
    job = harness.wait_finished(job_id, 60)
    assert job["state"] == "succeeded", job
    check_job_outputs(output_dir, sources, variants=2, seed=3)


# -- 4. Unreadable, truncated and non-image files in a job -----------------------------------------------------

def test_a_job_lists_its_unusable_files_and_processes_the_rest(harness):
    data = harness.tmp / "data"
    good = make_faces(data / "mixed", 4)
    bad_dir = data / "mixed" / "bad"
    bad_dir.mkdir()
    face = HR_FACES[0].read_bytes()
    whole_png = png_bytes(np.asarray(Image.open(HR_FACES[0]).convert("RGB")))
    expected = {
        "bad/truncated.png": "corrupt",
        "bad/half.jpg": "corrupt",
        "bad/notes.jpg": "not_an_image",
        "bad/empty.png": "empty",
        "bad/dangling.png": "unreadable",
        "bad/fifo.png": "not_a_file",
        "bad/bomb.png": "too_large",
        "bad/tiny.png": "too_small",
        "bad/vector.tiff": "not_an_image",
    }
    (bad_dir / "truncated.png").write_bytes(whole_png[: len(whole_png) // 2])
    (bad_dir / "half.jpg").write_bytes(face[: len(face) // 3])
    (bad_dir / "notes.jpg").write_text("not an image, whatever the extension says\n")
    (bad_dir / "empty.png").write_bytes(b"")
    os.symlink(bad_dir / "missing.png", bad_dir / "dangling.png")  # a link to nothing (inside the root)
    os.mkfifo(bad_dir / "fifo.png")  # reading it would block for ever
    (bad_dir / "bomb.png").write_bytes(bomb_png())
    (bad_dir / "tiny.png").write_bytes(png_bytes(np.zeros((5, 5, 3), dtype=np.uint8)))
    (bad_dir / "vector.tiff").write_bytes(b"<svg xmlns='http://www.w3.org/2000/svg'/>")
    try:  # a character device (like /dev/zero, which never ends): needs CAP_MKNOD
        os.mknod(bad_dir / "zero.png", 0o644 | stat.S_IFCHR, os.makedev(1, 5))
        expected["bad/zero.png"] = "not_a_file"
    except (PermissionError, OSError):
        pass
    bad_name = os.fsencode(str(bad_dir)) + b"/caf\xe9.png"  # Latin-1 bytes: not a UTF-8 name
    with open(bad_name, "wb") as f:
        f.write(face)
    expected["bad/caf\ufffd.png"] = "bad_name"
    if os.geteuid() != 0:  # root reads anything: an unreadable file can only be made for other users
        (bad_dir / "locked.png").write_bytes(face)
        os.chmod(bad_dir / "locked.png", 0)
        expected["bad/locked.png"] = "unreadable"

    job_id = harness.submit("mixed", variants=2, seed=8, chunk_size=3)
    harness.worker("worker")
    job = harness.wait_finished(job_id, 60)
    assert job["state"] == "succeeded", job
    total = len(good) + len(expected)
    assert (job["total"], job["done"], job["failed"]) == (total, len(good), len(expected)), job
    assert {e["source"]: e["reason"] for e in job["errors"]} == expected
    assert all(e["message"] for e in job["errors"])
    output_dir = Path(job["output_dir"])
    rows = [json.loads(line) for line in (output_dir / "errors.jsonl").read_text().splitlines()]
    assert {r["source"]: r["reason"] for r in rows} == expected
    (output_dir / "errors.jsonl").unlink()  # (check_job_outputs allows only outputs and the manifest)
    check_job_outputs(output_dir, good, variants=2, seed=8)


def test_a_file_name_too_long_for_its_output_fails_alone(harness):
    """A 230-byte name (whose output fits the 255-byte limit; its temp name once did not) is processed; a 254-byte
    one (whose output name would be too long) is listed as a failure with its reason, and the job goes on."""
    data = harness.tmp / "data"
    good = make_faces(data / "long", 3)
    fits, too_long = "b" * 226 + ".png", "a" * 250 + ".png"
    for name in (fits, too_long):
        shutil.copy(data / "long" / good[0], data / "long" / name)
    job_id = harness.submit("long", variants=2, seed=4, chunk_size=2)
    harness.worker("worker")
    job = harness.wait_finished(job_id, 60)
    assert job["state"] == "succeeded", job
    assert (job["total"], job["done"], job["failed"]) == (5, 4, 1), job
    assert [(e["source"], e["reason"]) for e in job["errors"]] == [(too_long, "name_too_long")]
    assert str(harness.tmp) not in job["errors"][0]["message"]
    output_dir = Path(job["output_dir"])
    (output_dir / "errors.jsonl").unlink()
    assert not _temp_files(output_dir)
    check_job_outputs(output_dir, sorted(good + [fits]), variants=2, seed=4)
