"""Micro-batching (lrface.core.batching.MicroBatcher and the models' micro_batch mode, used by the API).

- the batcher: concurrent requests share model calls of at most max_batch rows, every request gets exactly its own
  rows back, a request larger than a batch runs alone in chunks, a full queue refuses at once (Overloaded), a
  failing call fails only its own requests, a cancelled request is dropped, batch_wait_ms lets a batch fill up,
  and close() finishes what is queued before the worker stops (then refuses new work); `run_now` runs rows in the
  caller's thread only while nothing is queued or running.
- the models: rows batched with other callers' rows give the same results as unbatched calls. MR-GAN outputs
  are byte-identical (the randomness is fixed per (key, seed, k) before a row is queued); embeddings agree to
  float32 rounding (onnxruntime's vectorised Log in the embedder's gate can differ in the last bit with the
  batch size, as it already did for a multi-image request without micro-batching).
- the API: concurrent /v1/embed and /v1/synthesize requests with micro-batching give the answers that the same
  requests give one after the other without it, and the batcher did put several requests into one call; a lone
  /v1/embed request runs its model call on the event loop's thread (LRFACE_INLINE_LONE_REQUESTS), or on the
  batcher's when that is off, with the same answer.
"""
from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import threading
import time

import httpx
import numpy as np
import pytest
from PIL import Image

from lrface.core.face import encode_png
from lrface.core.batching import BatcherClosed, MicroBatcher, Overloaded
from lrface.core.embedder import Embedder
from lrface.core.synthesizer import Synthesizer
from lrface.service.settings import Settings
from service_helpers import HR_FACES, until, wait_for

FACES = [np.asarray(Image.open(p).convert("RGB")) for p in HR_FACES]


class Recorder:
    """A fake model: output row = 2 x input row; remembers the size of every call; can be held at a gate."""

    def __init__(self, hold: bool = False):
        self.sizes: list[int] = []
        self.gate = threading.Event()
        self.started = threading.Event()
        if not hold:
            self.gate.set()

    def __call__(self, feed):
        self.started.set()
        self.gate.wait(10)
        self.sizes.append(len(feed["x"]))
        return feed["x"] * 2.0


def rows(start: int, n: int) -> dict:
    return {"x": np.arange(start, start + n, dtype=np.float32).reshape(n, 1)}


# -- the batcher ----------------------------------------------------------------------------------------------------

def test_concurrent_requests_share_calls_and_get_their_own_rows():
    model = Recorder(hold=True)
    batcher = MicroBatcher("test model", model, max_batch=8, max_queue=64)
    try:
        first = batcher.submit(rows(1000, 1))
        model.started.wait(5)  # the first call is running: the next ones queue up behind it
        jobs = [batcher.submit(rows(10 * i, 1 + i % 3)) for i in range(12)]
        model.gate.set()
        assert first.result(5).ravel().tolist() == [2000.0]
        for i, job in enumerate(jobs):
            n = 1 + i % 3
            assert job.result(5).ravel().tolist() == [2.0 * v for v in range(10 * i, 10 * i + n)]
    finally:
        batcher.close()
    assert model.sizes[0] == 1 and all(size <= 8 for size in model.sizes)
    assert sum(model.sizes) == 1 + sum(1 + i % 3 for i in range(12))
    assert len(model.sizes) <= 1 + 4, f"12 queued requests (24 rows) should take few calls of <= 8 rows: {model.sizes}"
    assert batcher.batches == len(model.sizes)


def test_a_request_larger_than_a_batch_runs_alone_in_chunks():
    model = Recorder()
    batcher = MicroBatcher("test model", model, max_batch=4)
    try:
        out = batcher.submit(rows(0, 10)).result(5)
    finally:
        batcher.close()
    assert out.ravel().tolist() == [2.0 * v for v in range(10)]
    assert model.sizes == [4, 4, 2]


def test_a_full_queue_refuses_at_once_and_a_closed_batcher_refuses_everything():
    model = Recorder(hold=True)
    batcher = MicroBatcher("test model", model, max_batch=2, max_queue=2)
    running = batcher.submit(rows(0, 1))
    model.started.wait(5)
    queued = [batcher.submit(rows(1, 1)), batcher.submit(rows(2, 1))]
    start = time.monotonic()
    with pytest.raises(Overloaded, match="full"):
        batcher.submit(rows(3, 1))
    assert time.monotonic() - start < 0.5
    model.gate.set()
    assert [j.result(5).item() for j in [running] + queued] == [0.0, 2.0, 4.0]
    batcher.close()
    with pytest.raises(BatcherClosed):
        batcher.submit(rows(4, 1))


def test_close_finishes_the_queued_requests_first():
    model = Recorder(hold=True)
    batcher = MicroBatcher("test model", model, max_batch=1)
    jobs = [batcher.submit(rows(i, 1)) for i in range(5)]
    model.started.wait(5)
    closer = threading.Thread(target=batcher.close)
    closer.start()
    wait_for(lambda: batcher.closed, 10, 0.005, "close() to start")
    model.gate.set()
    closer.join(10)
    assert not closer.is_alive()
    assert [j.result(0).item() for j in jobs] == [0.0, 2.0, 4.0, 6.0, 8.0]
    assert not batcher._thread.is_alive()


def test_a_failing_call_fails_its_own_requests_only():
    calls = []

    def model(feed):
        calls.append(len(feed["x"]))
        if (feed["x"] < 0).any():
            raise RuntimeError("bad rows")
        return feed["x"]

    batcher = MicroBatcher("test model", model, max_batch=1)
    try:
        bad, good = batcher.submit(rows(-5, 1)), batcher.submit(rows(5, 1))
        with pytest.raises(RuntimeError, match="bad rows"):
            bad.result(5)
        assert good.result(5).item() == 5.0
    finally:
        batcher.close()


def test_run_now_runs_in_the_calling_thread_only_when_the_batcher_is_idle():
    threads = []

    def model(feed):
        threads.append(threading.current_thread().name)
        if (feed["x"] < 0).any():
            raise RuntimeError("bad rows")
        return feed["x"] * 2.0

    batcher = MicroBatcher("test model", model, max_batch=4)
    try:
        assert batcher.run_now(rows(3, 2)).ravel().tolist() == [6.0, 8.0]
        assert threads == [threading.current_thread().name] and batcher.batches == 1 and batcher.rows == 2
        assert batcher.run_now(rows(0, 5)) is None, "more rows than one call takes: submit them instead"
        with pytest.raises(RuntimeError, match="bad rows"):
            batcher.run_now(rows(-1, 1))
        assert batcher._running == 0
    finally:
        batcher.close()
    assert batcher.run_now(rows(0, 1)) is None, "a closed batcher runs nothing"

    held = Recorder(hold=True)
    busy = MicroBatcher("test model", held, max_batch=4)
    try:
        running = busy.submit(rows(0, 1))
        held.started.wait(5)
        assert busy.run_now(rows(1, 1)) is None, "a call is running: the caller must queue"
        queued = busy.submit(rows(2, 1))
        assert busy.run_now(rows(3, 1)) is None, "requests are queued: the caller must queue behind them"
        held.gate.set()
        assert [running.result(5).item(), queued.result(5).item()] == [0.0, 4.0]
        deadline = time.monotonic() + 5
        while busy._running and time.monotonic() < deadline:
            time.sleep(0.01)
        assert busy.run_now(rows(7, 1)).item() == 14.0
    finally:
        busy.close()


def test_waiting_lets_a_batch_fill_and_expired_or_cancelled_requests_are_dropped():
    model = Recorder(hold=True)
    batcher = MicroBatcher("test model", model, max_batch=8, max_wait_s=0.3)
    try:
        # concurrent load: two requests queue up behind a running call and share the next one
        first = batcher.submit(rows(0, 1))
        model.started.wait(5)
        pair = [batcher.submit(rows(1, 1)), batcher.submit(rows(2, 1))]
        model.gate.set()
        assert [j.result(5).item() for j in [first] + pair] == [0.0, 2.0, 4.0]
        # after a call for several requests, a batch that is not full waits for more rows
        a = batcher.submit(rows(3, 1))
        time.sleep(0.05)
        b = batcher.submit(rows(4, 1))  # within the first one's wait: same call
        assert (a.result(5).item(), b.result(5).item()) == (6.0, 8.0)
        lone = batcher.submit(rows(5, 1)).result(5)  # waits in vain (the last call served two) ...
        start = time.monotonic()
        assert batcher.submit(rows(6, 1)).result(5).item() == 12.0  # ... but after a lone call nobody waits
        assert time.monotonic() - start < 0.2
        assert lone.item() == 10.0 and model.sizes == [1, 2, 2, 1, 1]
    finally:
        batcher.close()

    model = Recorder(hold=True)
    batcher = MicroBatcher("test model", model, max_batch=8, queue_timeout_s=0.2)

    async def scenario():
        running = batcher.submit_async(rows(0, 1))
        await until(model.started.is_set, what="the first call to start")
        expired = batcher.submit_async(rows(1, 1))
        cancelled = batcher.submit_async(rows(2, 1))
        cancelled.cancel()
        await asyncio.sleep(0.3)
        fresh = batcher.submit_async(rows(3, 1))
        model.gate.set()
        with pytest.raises(Overloaded, match="waited"):
            await expired
        return (await running).item(), (await fresh).item()

    try:
        assert asyncio.run(scenario()) == (0.0, 6.0)
    finally:
        batcher.close()
    assert model.sizes == [1, 1], "neither the expired nor the cancelled request may reach the model"


# -- the models -----------------------------------------------------------------------------------------------------

def _concurrently(fn, args_list, threads=8):
    barrier = threading.Barrier(threads)

    def call(args):
        try:
            barrier.wait(5)
        except threading.BrokenBarrierError:
            pass
        return fn(*args)

    with concurrent.futures.ThreadPoolExecutor(threads) as pool:
        return list(pool.map(call, args_list))


def test_batched_embeddings_match_unbatched_ones(embedder_path):
    plain = Embedder(embedder_path, threads=1)
    batched = Embedder(embedder_path, threads=1, micro_batch=True, max_batch=16, batch_wait_ms=20)
    try:
        requests = [[FACES[i % len(FACES)][:, ::(1 if i % 2 else -1)].copy() for i in range(j, j + 1 + j % 3)]
                    for j in range(24)]
        expected = [plain.embed(faces) for faces in requests]
        got = _concurrently(batched.embed, [(faces,) for faces in requests])
        assert batched.batcher.batches < len(requests), "concurrent calls should have shared model calls"
    finally:
        batched.close()
    for e, g in zip(expected, got):
        assert g.shape == e.shape and g.dtype == np.float32
        np.testing.assert_allclose(g, e, rtol=0, atol=1e-6)
        np.testing.assert_allclose(np.linalg.norm(g, axis=1), 1.0, atol=1e-5)


def test_batched_synthesis_is_byte_identical_to_unbatched(mrgan_path):
    plain = Synthesizer(mrgan_path, threads=1)
    batched = Synthesizer(mrgan_path, threads=1, micro_batch=True, max_batch=8, batch_wait_ms=20)
    calls = [([FACES[i % len(FACES)]], [f"face_{i}.jpg"], 1 + i % 3, 100 + i, bool(i % 4 == 3)) for i in range(16)]

    def run(synth, faces, keys, variants, seed, canvas):
        (made,) = synth.synthesize(faces, keys=keys, variants=variants, seed=seed, canvas=canvas)
        return [(v.k, v.height, v.width, encode_png(v.image)) for v in made]

    try:
        expected = [run(plain, *c) for c in calls]
        got = _concurrently(lambda *c: run(batched, *c), calls)
        assert batched.batcher.batches < len(calls)
    finally:
        batched.close()
    assert got == expected


# -- the API --------------------------------------------------------------------------------------------------------

def _app(mrgan_path, embedder_path, tmp_path, micro_batch: bool):
    from lrface.service.api import create_app

    settings = Settings(mrgan_model_path=mrgan_path, embedder_model_path=embedder_path, threads=1, providers=["cpu"],
                        state_dir=tmp_path / ("mb" if micro_batch else "plain"), load_models_on_startup=False,
                        micro_batch=micro_batch, batch_wait_ms=20, inference_concurrency=2)
    return create_app(settings)


def _requests():
    out = []
    for i in range(12):
        face = (HR_FACES[i % len(HR_FACES)].name, HR_FACES[i % len(HR_FACES)].read_bytes(), "image/jpeg")
        if i % 3 == 0:
            out.append(("/v1/synthesize", {"files": {"image": face},
                                           "data": {"variants": str(1 + i % 4), "seed": str(i), "canvas": str(i % 2 == 0).lower()}}))
        elif i % 3 == 1:
            out.append(("/v1/embed", {"files": [("images", face)] * (1 + i % 2)}))
        else:
            other = (HR_FACES[(i + 1) % len(HR_FACES)].name, HR_FACES[(i + 1) % len(HR_FACES)].read_bytes(), "image/jpeg")
            out.append(("/v1/verify", {"files": {"image_a": face, "image_b": other}}))
    return out


async def _post_all(app, requests, concurrent_: bool):
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test", timeout=60) as client:
        if concurrent_:
            return await asyncio.gather(*(client.post(path, **kw) for path, kw in requests))
        return [await client.post(path, **kw) for path, kw in requests]


def test_concurrent_api_requests_answer_as_sequential_unbatched_ones(tmp_path, mrgan_path, embedder_path):
    requests = _requests()
    plain_app = _app(mrgan_path, embedder_path, tmp_path, micro_batch=False)
    expected = asyncio.run(_post_all(plain_app, requests, concurrent_=False))
    app = _app(mrgan_path, embedder_path, tmp_path, micro_batch=True)
    services = app.state.services
    try:
        got = asyncio.run(_post_all(app, requests, concurrent_=True))
        calls = {name: services.models[name].batcher.batches for name in ("synthesizer", "embedder")}
    finally:
        services.close_models()
    assert "embedder" not in services.models, "close_models() drops the closed models"
    for (path, _), e, g in zip(requests, expected, got):
        assert e.status_code == g.status_code == 200, (path, e.text[:200], g.text[:200])
        e, g = e.json(), g.json()
        if path == "/v1/synthesize":
            assert g == e  # base64 PNGs, heights, seeds: byte-identical
            for v in g["variants"]:
                assert base64.b64decode(v["image_base64"]).startswith(b"\x89PNG")
        elif path == "/v1/embed":
            assert g["items"] == e["items"] and (g["model_id"], g["dim"]) == (e["model_id"], e["dim"])
            np.testing.assert_allclose(g["embeddings"], e["embeddings"], rtol=0, atol=1e-6)
        else:
            assert g["same_person"] == e["same_person"] and abs(g["similarity"] - e["similarity"]) < 1e-6
    embed_requests = sum(path != "/v1/synthesize" for path, _ in requests)
    assert calls["embedder"] < embed_requests, f"the embedder batcher made {calls['embedder']} calls for {embed_requests} requests"


@pytest.mark.parametrize("inline", [True, False])
def test_a_lone_embed_request_runs_on_the_event_loop_thread_when_inline_is_on(tmp_path, mrgan_path, embedder_path, inline):
    from lrface.service.api import create_app

    settings = Settings(mrgan_model_path=mrgan_path, embedder_model_path=embedder_path, threads=1, providers=["cpu"],
                        state_dir=tmp_path, load_models_on_startup=False, inline_lone_requests=inline)
    app = create_app(settings)
    services = app.state.services
    embedder = services.model("embedder")
    run, threads = embedder.batcher._run, []

    def recording(feed):
        threads.append(threading.current_thread().name)
        return run(feed)

    embedder.batcher._run = recording
    face = (HR_FACES[0].name, HR_FACES[0].read_bytes(), "image/jpeg")

    async def post():
        # (the loop of this test is the server's event loop: ASGITransport calls the app in it)
        loop_thread = threading.current_thread().name
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test", timeout=60) as client:
            return loop_thread, await client.post("/v1/embed", files=[("images", face)])

    try:
        loop_thread, r = asyncio.run(post())
    finally:
        services.close_models()
    assert r.status_code == 200, r.text
    expected = Embedder(embedder_path, threads=1).embed([FACES[0]])
    np.testing.assert_allclose(r.json()["embeddings"], expected, rtol=0, atol=1e-6)
    assert threads == [loop_thread if inline else "lrface-batcher-face embedder"]


def test_inline_embedding_is_kept_to_small_batches(embedder_path):
    from lrface.core.embedder import INLINE_MAX_ROWS

    embedder = Embedder(embedder_path, threads=1, micro_batch=True)
    run, threads = embedder.batcher._run, []

    def recording(feed):
        threads.append((threading.current_thread().name, len(feed["face"])))
        return run(feed)

    embedder.batcher._run = recording

    async def embed(n):
        return await embedder.run_async(embedder.prepare([FACES[0]] * n), inline=True)

    try:
        small, large = asyncio.run(embed(INLINE_MAX_ROWS)), asyncio.run(embed(INLINE_MAX_ROWS + 1))
    finally:
        embedder.close()
    assert threads == [(threading.current_thread().name, INLINE_MAX_ROWS),
                       ("lrface-batcher-face embedder", INLINE_MAX_ROWS + 1)]
    np.testing.assert_allclose(small[0], large[0], rtol=0, atol=1e-6)
