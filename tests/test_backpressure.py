"""Backpressure: bounded queues with 503 / 429 + Retry-After instead of unbounded waiting, and request timeouts.

- admission: with LRFACE_INFERENCE_CONCURRENCY=1 and LRFACE_INFERENCE_QUEUE_SIZE=1 a third inference request
  in flight is refused at once (503 `overloaded`, Retry-After) before its body is read; others still answer.
- compute gate: a request that waits longer than LRFACE_INFERENCE_QUEUE_TIMEOUT for its turn gets 503.
- micro-batching: a request that waits longer than that in a model's batcher queue gets 503, and so does one that
  finds the queue full (LRFACE_BATCH_QUEUE_SIZE), at once.
- a burst of 40 concurrent requests at that server: every answer is 200 or 503 + Retry-After, nothing else.
- body timeouts: an upload that stalls longer than LRFACE_BODY_IDLE_TIMEOUT gets 408 (also archive uploads).
- jobs: with LRFACE_MAX_ACTIVE_JOBS=2 a third queued job gets 429 `too_many_jobs` + Retry-After (JSON and
  archive uploads alike, the archive refused before it is stored); a finished or vanished job frees its place.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import io
import threading
import time
import zipfile

import httpx
import pytest

from lrface.service.api.errors import APIError
from lrface.service.api.limits import InferenceLimiter
from lrface.service.settings import Settings
from service_helpers import HR_FACES, make_faces, until
from test_faults import HalfSentRequest, _multipart

pytestmark = [pytest.mark.redis, pytest.mark.process]

RETRY_AFTER = 3
JOBS_RETRY_AFTER = 7
IDLE_TIMEOUT = 1.5
FACE = (HR_FACES[0].name, HR_FACES[0].read_bytes(), "image/jpeg")


# -- the compute gate, in process -------------------------------------------------------------------------------

def test_the_limiter_bounds_concurrency_and_waiting_time():
    settings = Settings(inference_concurrency=2, inference_queue_timeout=0.2, retry_after_s=RETRY_AFTER)
    shed = []
    limiter = InferenceLimiter(settings, on_shed=shed.append)

    async def scenario():
        release = asyncio.Event()
        peak = 0

        async def hold():
            nonlocal peak
            async with limiter.slot():
                peak = max(peak, limiter.active)
                await release.wait()

        holders = [asyncio.create_task(hold()) for _ in range(2)]
        await until(lambda: limiter.active == 2, what="both holders in their slots")
        start = time.monotonic()
        with pytest.raises(APIError) as err:
            async with limiter.slot():
                pass
        waited = time.monotonic() - start
        release.set()
        await asyncio.gather(*holders)
        async with limiter.slot():  # free again
            assert limiter.active == 1
        return err.value, waited, peak

    err, waited, peak = asyncio.run(scenario())
    assert (err.status_code, err.error) == (503, "overloaded") and err.headers == {"Retry-After": str(RETRY_AFTER)}
    assert 0.15 < waited < 2.0 and peak == 2
    assert shed == ["queue_timeout"] and limiter.active == 0 and limiter.waiting == 0


def test_a_request_waiting_too_long_for_its_turn_gets_503(tmp_path, mrgan_path, embedder_path):
    from lrface.service.api import create_app

    # Without micro-batching the model call itself runs under the compute gate (with it, see the next test).
    settings = Settings(mrgan_model_path=mrgan_path, embedder_model_path=embedder_path, threads=1,
                        state_dir=tmp_path, inference_concurrency=1, inference_queue_timeout=0.3,
                        retry_after_s=RETRY_AFTER, load_models_on_startup=False, micro_batch=False)
    app = create_app(settings)
    services = app.state.services
    embedder = services.model("embedder")
    gate = threading.Event()

    class SlowEmbedder:  # the first request holds the only compute slot until the gate opens
        def __getattr__(self, name):
            return getattr(embedder, name)

        def run(self, batch):  # (the model call of the request's prepared faces)
            gate.wait(10)
            return embedder.run(batch)

    services.models["embedder"] = SlowEmbedder()

    async def scenario():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test", timeout=30) as client:
            first = asyncio.create_task(client.post("/v1/embed", files=[("images", FACE)]))
            await until(lambda: services.limiter.active == 1, what="the first request in the compute slot")
            second = await client.post("/v1/embed", files=[("images", FACE)])
            gate.set()
            return await first, second

    first, second = asyncio.run(scenario())
    assert first.status_code == 200, first.text
    assert second.status_code == 503 and second.json()["error"] == "overloaded", second.text
    assert second.headers["retry-after"] == str(RETRY_AFTER)


def test_a_request_waiting_too_long_in_the_batcher_or_finding_it_full_gets_503(tmp_path, mrgan_path, embedder_path):
    from lrface.service.api import create_app

    settings = Settings(mrgan_model_path=mrgan_path, embedder_model_path=embedder_path, threads=1,
                        state_dir=tmp_path, inference_queue_timeout=0.3, retry_after_s=RETRY_AFTER,
                        load_models_on_startup=False, micro_batch=True, batch_queue_size=1,
                        inline_lone_requests=False)  # (the first request must hold the batcher, not the loop)
    app = create_app(settings)
    services = app.state.services
    batcher = services.model("embedder").batcher
    run, gate, started = batcher._run, threading.Event(), threading.Event()

    def slow_run(feed):  # the first batch holds the model until the gate opens
        started.set()
        gate.wait(10)
        return run(feed)

    batcher._run = slow_run

    async def scenario():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test", timeout=30) as client:
            first = asyncio.create_task(client.post("/v1/embed", files=[("images", FACE)]))
            await until(started.is_set, what="the first batch to start")
            second = asyncio.create_task(client.post("/v1/embed", files=[("images", FACE)]))  # queued
            await until(lambda: batcher.pending() == 1, what="the second request in the batcher's queue")
            third = await client.post("/v1/embed", files=[("images", FACE)])  # the queue (1) is full
            await asyncio.sleep(0.4)  # the second request has now waited longer than the queue timeout
            gate.set()
            return await first, await second, third

    try:
        first, second, third = asyncio.run(scenario())
    finally:
        gate.set()
        services.close_models()
    assert first.status_code == 200, first.text
    for r in (second, third):
        assert r.status_code == 503 and r.json()["error"] == "overloaded", r.text
        assert r.headers["retry-after"] == str(RETRY_AFTER)
    assert "full" in third.json()["message"] and "waited" in second.json()["message"]
    assert batcher.batches == 1, "the expired request must not reach the model"


# -- over real HTTP --------------------------------------------------------------------------------------------

SERVER_ENV = dict(
    LRFACE_INFERENCE_CONCURRENCY=1, LRFACE_INFERENCE_QUEUE_SIZE=1, LRFACE_INFERENCE_QUEUE_TIMEOUT=20,
    LRFACE_BODY_IDLE_TIMEOUT=IDLE_TIMEOUT, LRFACE_BODY_TIMEOUT=20, LRFACE_MAX_ACTIVE_JOBS=2,
    LRFACE_RETRY_AFTER_S=RETRY_AFTER, LRFACE_JOBS_RETRY_AFTER_S=JOBS_RETRY_AFTER,
)


def prepare_server(tmp):
    make_faces(tmp / "data" / "faces", 2)


@pytest.fixture(scope="module")
def http(server):
    with server.client() as client:
        yield client


def _overloaded(r: httpx.Response) -> None:
    assert r.status_code == 503, r.text
    assert r.json()["error"] == "overloaded" and r.headers["retry-after"] == str(RETRY_AFTER)


def test_a_request_beyond_the_admission_queue_is_refused_at_once(server, http):
    body, content_type = _multipart({"variants": "2", "seed": "1"}, {"image": FACE})
    held = [HalfSentRequest(server.base_url, "/v1/synthesize", body, content_type) for _ in range(2)]
    time.sleep(0.5)  # both are in: one would compute, one waits (their bodies are still coming)
    start = time.monotonic()
    _overloaded(http.post("/v1/embed", files=[("images", FACE)]))
    assert time.monotonic() - start < 2.0, "the refusal should not wait for anything"
    assert http.get("/healthz").status_code == 200  # not an inference request: not gated
    for request in held:
        status, answer = request.finish()
        assert status == 200 and len(answer["variants"]) == 2, answer
    assert http.post("/v1/embed", files=[("images", FACE)]).status_code == 200
    assert 'lrface_requests_shed_total{reason="admission"}' in http.get("/metrics").text


def test_a_burst_is_answered_with_200_or_503_and_nothing_else(server):
    def one(i: int) -> httpx.Response:
        with httpx.Client(base_url=server.base_url, timeout=60) as c:
            if i % 2:
                return c.post("/v1/embed", files=[("images", FACE)])
            return c.post("/v1/synthesize", files={"image": FACE}, data={"variants": "4", "seed": str(i)})

    with concurrent.futures.ThreadPoolExecutor(40) as pool:
        answers = list(pool.map(one, range(40)))
    statuses = [r.status_code for r in answers]
    assert set(statuses) <= {200, 503}, statuses
    assert statuses.count(200) >= 1 and statuses.count(503) >= 1, statuses
    for r in answers:
        if r.status_code == 503:
            _overloaded(r)


def test_a_stalled_upload_times_out(server):
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("a.jpg", FACE[1])
    body, content_type = _multipart({"variants": "1"}, {"archive": ("a.zip", archive.getvalue(), "application/zip")})
    stalled = HalfSentRequest(server.base_url, "/v1/jobs", body, content_type)  # the rest never comes
    start = time.monotonic()
    status, answer = stalled.read()
    assert status == 408 and answer["error"] == "request_timeout", answer
    assert IDLE_TIMEOUT - 0.2 < time.monotonic() - start < IDLE_TIMEOUT + 5
    assert not list((server.tmp / "jobs" / "_uploads").glob("*.upload"))


def _too_many(r: httpx.Response) -> None:
    assert r.status_code == 429, r.text
    assert r.json()["error"] == "too_many_jobs" and r.headers["retry-after"] == str(JOBS_RETRY_AFTER)


def test_the_number_of_queued_jobs_is_bounded(server, http):
    first = http.post("/v1/jobs", json={"input_dir": "faces", "variants": 1})
    second = http.post("/v1/jobs", json={"input_dir": "faces", "variants": 1})
    assert first.status_code == second.status_code == 202, (first.text, second.text)
    _too_many(http.post("/v1/jobs", json={"input_dir": "faces", "variants": 1}))
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("a.jpg", FACE[1])
    _too_many(http.post("/v1/jobs", files={"archive": ("a.zip", archive.getvalue(), "application/zip")},
                        data={"variants": "1"}))
    uploads = server.tmp / "jobs" / "_uploads"
    assert not uploads.exists() or not list(uploads.iterdir()), "a refused archive was stored"

    # A finished (here: cancelled) job gives its place back ...
    assert http.delete(f"/v1/jobs/{first.json()['job_id']}").status_code == 200
    third = http.post("/v1/jobs", json={"input_dir": "faces", "variants": 1})
    assert third.status_code == 202, third.text
    _too_many(http.post("/v1/jobs", json={"input_dir": "faces", "variants": 1}))
    # ... and so does a job whose state vanished from Redis (e.g. deleted by an operator).
    server.redis.delete(f"{server.prefix}job:{second.json()['job_id']}")
    assert http.post("/v1/jobs", json={"input_dir": "faces", "variants": 1}).status_code == 202
