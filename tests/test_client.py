"""lrface.client against a real `lrface serve` (embedded broker and worker, API keys on): every method, sync and
async, every kind of image input, typed errors, and retries of 429 / 503 that honour Retry-After."""
from __future__ import annotations

import asyncio
import io
import json
import time
import zipfile

import httpx
import numpy as np
import pytest
from PIL import Image

from lrface.client import (
    AsyncClient,
    AuthenticationError,
    Client,
    InvalidRequestError,
    Job,
    NotFoundError,
    OverloadedError,
    RateLimitedError,
    Variant,
)
from lrface.core.face import FACE_HEIGHT, FACE_WIDTH, lr_width_for_height
from service_helpers import HR_FACES, RAW_PHOTOS, make_faces

pytestmark = [pytest.mark.process]

API_KEY = "client-test-key"


# The embedded broker; one job at a time, retried after 1 s: the retry test makes the second job wait for the first.
SERVER_ON_TEST_REDIS = False
SERVER_ENV = dict(LRFACE_API_KEYS=API_KEY, LRFACE_CHUNK_SIZE=4, LRFACE_MAX_ACTIVE_JOBS=1, LRFACE_JOBS_RETRY_AFTER_S=1)


@pytest.fixture()
def client(server):
    with Client(server.base_url, api_key=API_KEY) as c:
        yield c


def _rgb(path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


def test_synthesize_takes_paths_bytes_pil_images_and_arrays(client):
    path = HR_FACES[0]
    from_path = client.synthesize(path, variants=3, seed=7, height=24)
    assert len(from_path) == 3 and from_path.seed == 7 and from_path.face_box is None and from_path.model_id
    for k, v in enumerate(from_path):
        assert isinstance(v, Variant) and v.k == k and v.seed == 7 and v.height == 24
        assert v.image.dtype == np.uint8 and v.image.shape == (24, lr_width_for_height(24), 3)
    # The file name is the randomness key: the same bytes under the same name give the same variants.
    again = client.synthesize(path.read_bytes(), variants=3, seed=7, height=24)
    assert len(again) == 3
    array = client.synthesize(_rgb(path), variants=2, seed=7)
    pil = client.synthesize(Image.open(path), variants=2, seed=7)
    for a, b in zip(array, pil):
        assert a.height == b.height and np.array_equal(a.image, b.image)
    canvas = client.synthesize(_rgb(path), variants=1, seed=1, canvas=True)
    assert canvas[0].image.shape == (FACE_HEIGHT, FACE_WIDTH, 3)


def test_synthesize_aligns_a_raw_photo(client):
    result = client.synthesize(RAW_PHOTOS[0], variants=1, seed=3, align="auto")
    assert result.face_box and result.face_box["score"] > 0.9


def test_embed_and_verify(client):
    vectors = client.embed([HR_FACES[0], HR_FACES[1].read_bytes(), _rgb(HR_FACES[2])])
    assert vectors.dtype == np.float32 and vectors.ndim == 2 and vectors.shape[0] == 3
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-4)
    single = client.embed(HR_FACES[0])
    np.testing.assert_allclose(single[0], vectors[0], atol=1e-5)
    same = client.verify(HR_FACES[0], _rgb(HR_FACES[0]))
    assert same.similarity == pytest.approx(1.0, abs=1e-4) and same.same_person and 0 < same.threshold < 1
    other = client.verify(HR_FACES[0], HR_FACES[5])
    assert other.same_person == (other.similarity >= other.threshold)
    lite = client.embed(HR_FACES[0], model="lite")  # the second shipped embedder, by name
    assert lite.shape == single.shape and not np.allclose(lite, single, atol=1e-3)
    assert client.verify(HR_FACES[0], HR_FACES[5], model="lite").threshold != other.threshold


def test_job_from_a_local_folder_with_progress_and_manifest(client, tmp_path, capsys):
    sources = make_faces(tmp_path / "faces", 5)
    job = client.submit_job(tmp_path / "faces", variants=2, seed=4)
    assert isinstance(job, Job) and job.total == 5 and job.state in ("queued", "running", "succeeded")
    done = client.wait(job, progress=True, poll_interval=0.1, timeout=120)
    assert done.state == "succeeded" and (done.done, done.failed) == (5, 0)
    assert "5/5" in capsys.readouterr().err  # the tqdm bar
    rows = client.manifest(done)
    assert sorted((r["source"], r["k"]) for r in rows) == sorted((s, k) for s in sources for k in range(2))
    assert all(r["seed"] == 4 for r in rows)


def test_job_from_an_archive_and_from_a_folder_on_the_server(client, server, tmp_path):
    archive = tmp_path / "faces.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for path in HR_FACES[:2]:
            zf.write(path, path.name)
    done = client.wait(client.submit_job(archive, variants=1, seed=0), progress=False, poll_interval=0.1, timeout=120)
    assert done.state == "succeeded" and done.total == 2 and len(client.manifest(done.id)) == 2
    make_faces(server.tmp / "data" / "on-server", 2)
    done = client.wait(client.submit_job(input_dir="on-server", variants=1), progress=False, poll_interval=0.1, timeout=120)
    assert done.state == "succeeded" and done.raw["input"] == "on-server"
    job = client.submit_job(input_dir="on-server", kind="embed", model="lite")  # an embedding job, by name
    done = client.wait(job, progress=False, poll_interval=0.1, timeout=120)
    assert done.state == "succeeded" and done.raw["params"] == {"kind": "embed", "model": "lite"}


def test_errors_are_typed_and_carry_the_api_code(server, client):
    with Client(server.base_url, api_key="wrong") as bad:
        with pytest.raises(AuthenticationError) as info:
            bad.embed(HR_FACES[0])
    assert info.value.status_code == 401 and info.value.code == "unauthorized"
    with pytest.raises(InvalidRequestError) as info:
        client.embed(b"hello, not an image\n" * 20)
    assert info.value.status_code == 415 and info.value.code == "not_an_image"
    with pytest.raises(InvalidRequestError) as info:
        client.synthesize(HR_FACES[0], variants=1, height=500)
    assert info.value.code == "validation_error" and "height" in info.value.message
    with pytest.raises(NotFoundError) as info:
        client.job("a" * 32)
    assert info.value.code == "job_not_found"
    with pytest.raises(TypeError):
        client.embed([1.5])
    with pytest.raises(TypeError):
        client.submit_job(input_dir="x", colour="red")


def test_a_429_is_retried_after_its_retry_after(server, client, tmp_path):
    """LRFACE_MAX_ACTIVE_JOBS=1: while a job runs, the next one is refused with 429 + Retry-After: 1; the client
    waits and retries until the first has finished, and without retries raises RateLimitedError."""
    make_faces(server.tmp / "data" / "busy", 6)
    first = client.submit_job(input_dir="busy", variants=2, seed=1)
    with Client(server.base_url, api_key=API_KEY, max_retries=0) as impatient:
        with pytest.raises(RateLimitedError) as info:  # (a job takes the worker far longer than this request)
            impatient.submit_job(input_dir="busy", variants=1)
    assert info.value.code == "too_many_jobs" and info.value.retry_after == 1
    with Client(server.base_url, api_key=API_KEY, max_retries=120) as patient:  # (a busy machine: up to 2 min)
        second = patient.submit_job(input_dir="busy", variants=1, seed=2)  # retried until the first is done
    finished = client.job(first)
    assert finished.state == "succeeded"
    assert second.raw["created_at"] >= finished.raw["finished_at"]
    assert client.wait(second, progress=False, poll_interval=0.1, timeout=120).state == "succeeded"


def test_503_is_retried_with_the_servers_retry_after_then_raised():
    """The retry loop itself (a scripted transport): Retry-After is honoured, and the error comes once the
    retries are spent."""
    calls = []

    def answer(request: httpx.Request) -> httpx.Response:
        calls.append(time.monotonic())
        if len(calls) < 3:
            return httpx.Response(503, headers={"Retry-After": "0.2"}, json={"error": "overloaded", "message": "busy"})
        return httpx.Response(200, json={"similarity": 0.5, "same_person": True, "threshold": 0.4, "model_id": "m"})

    with Client("http://lrface.test", transport=httpx.MockTransport(answer)) as c:
        result = c.verify(b"a", b"b")
    assert result.similarity == 0.5 and len(calls) == 3
    assert all(b - a >= 0.2 for a, b in zip(calls, calls[1:]))
    calls.clear()
    with Client("http://lrface.test", transport=httpx.MockTransport(answer), max_retries=1) as c:
        with pytest.raises(OverloadedError) as info:
            c.verify(b"a", b"b")
    assert info.value.code == "overloaded" and info.value.retry_after == 0.2 and len(calls) == 2


def test_async_client_has_the_same_methods(server, tmp_path):
    make_faces(tmp_path / "faces", 2)

    async def main():
        async with AsyncClient(server.base_url, api_key=API_KEY) as c:
            variants, vectors, same = await asyncio.gather(
                c.synthesize(HR_FACES[0], variants=2, seed=5, height=20),
                c.embed([HR_FACES[0], HR_FACES[1]]),
                c.verify(HR_FACES[0], HR_FACES[0]),
            )
            job = await c.wait(await c.submit_job(tmp_path / "faces", variants=1, seed=0), progress=False,
                               poll_interval=0.1, timeout=120)
            rows = await c.manifest(job)
            with pytest.raises(NotFoundError):
                await c.job("b" * 32)
        return variants, vectors, same, job, rows

    variants, vectors, same, job, rows = asyncio.run(main())
    with Client(server.base_url, api_key=API_KEY) as c:
        sync_variants = c.synthesize(HR_FACES[0], variants=2, seed=5, height=20)
    assert [v.image.tobytes() for v in variants] == [v.image.tobytes() for v in sync_variants]
    assert vectors.shape[0] == 2 and same.same_person
    assert job.state == "succeeded" and len(rows) == 2
