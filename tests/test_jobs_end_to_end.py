"""A remote client drives bulk jobs end to end over real HTTP (`lrface serve`), with a real Celery worker and
Redis: submit an augmentation and an embedding job on a zip, watch per-image progress, list them (per API key,
paginated), download both results (tar with a resumed Range request, zip), read the metrics, purge them."""
from __future__ import annotations

import io
import re
import tarfile
import zipfile
from pathlib import Path

import httpx
import numpy as np
import pytest

from lrface.service.offline import main_embed
from service_helpers import (
    TEST_REDIS_URL,
    expected_outputs,
    files_under,
    forget_namespace,
    make_faces,
    redis_or_skip,
    serve,
    service_env,
    start_worker,
    unique_namespace,
    wait_for,
)

pytestmark = [pytest.mark.redis, pytest.mark.process]

KEY_A, KEY_B = "key-a-0123456789", "key-b-9876543210"
N_FACES = 12


def _zip_folder(folder: Path) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for path in sorted(folder.rglob("*.png")):
            zf.write(path, path.relative_to(folder).as_posix())
    return buf.getvalue()


@pytest.fixture
def service(tmp_path, mrgan_path, embedder_path):
    client = redis_or_skip()
    prefix, queue = unique_namespace()
    # One chunk per job and small model batches: progress inside a chunk shows per batch of 2 images.
    env = service_env(tmp_path, mrgan_path, embedder_path, LRFACE_BROKER_URL=TEST_REDIS_URL, LRFACE_KEY_PREFIX=prefix,
                      LRFACE_QUEUE=queue, LRFACE_API_KEYS=f"{KEY_A},{KEY_B}", LRFACE_CHUNK_SIZE=64,
                      LRFACE_SYNTH_MAX_BATCH=4, LRFACE_EMBED_MAX_BATCH=4)
    server = serve(env, tmp_path)
    workers = []
    try:
        yield server, env, workers
    finally:
        server.stop()
        for w in workers:
            w.stop()
        forget_namespace(client, prefix, queue)


def _submit(http: httpx.Client, archive: bytes, **fields) -> dict:
    r = http.post("/v1/jobs", files={"archive": ("faces.zip", archive, "application/zip")},
                  data={k: str(v) for k, v in fields.items()})
    assert r.status_code == 202, r.text
    return r.json()


def test_a_remote_client_submits_watches_lists_downloads_and_purges_jobs(service, tmp_path, embedder_path):
    server, env, workers = service
    src = tmp_path / "src"
    sources = make_faces(src, N_FACES, scale=6)
    archive = _zip_folder(src)
    a = server.client(headers={"Authorization": f"Bearer {KEY_A}"})
    b = server.client(headers={"Authorization": f"Bearer {KEY_B}"})

    augment = _submit(a, archive, variants=2, seed=7)
    embed = _submit(a, archive, kind="embed")
    other = _submit(b, archive, kind="embed")
    assert augment["kind"] == "augment" and embed["kind"] == "embed" and embed["params"] == {"kind": "embed", "model": "full"}
    assert augment["counts"] == {"total": N_FACES, "done": 0, "failed": 0}
    # Synthesis fields make no sense for an embedding job: a clear 422, no job.
    bad = a.post("/v1/jobs", files={"archive": ("faces.zip", archive, "application/zip")},
                 data={"kind": "embed", "variants": "3"})
    assert bad.status_code == 422 and "variants" in bad.json()["message"]

    workers.append(start_worker(env, tmp_path / "worker.log"))

    # Per-image progress: counts.done moves inside the one chunk, with a rate and an ETA.
    seen: list[dict] = []

    def augment_finished():
        job = a.get(f"/v1/jobs/{augment['job_id']}").json()
        seen.append(job)
        return job["state"] in ("succeeded", "failed") and job

    job = wait_for(augment_finished, 180, 0.01, "the augmentation job")
    assert job["state"] == "succeeded", job
    assert job["counts"] == {"total": N_FACES, "done": N_FACES, "failed": 0}
    partial = [j for j in seen if j["chunks"]["done"] == 0 and 0 < j["counts"]["done"] < N_FACES]
    assert partial, f"no per-image progress seen inside the chunk: {[j['counts'] for j in seen][:50]}"
    assert all(j["rate"] > 0 and j["eta_s"] is not None and j["eta_s"] >= 0 for j in partial)
    assert job["rate"] > 0 and job["eta_s"] is None and job["started_at"] >= job["created_at"]

    for job_id in (embed["job_id"], other["job_id"]):
        done = wait_for(lambda: (j := a.get(f"/v1/jobs/{job_id}").json() if job_id == embed["job_id"]
                                 else b.get(f"/v1/jobs/{job_id}").json())["state"] in ("succeeded", "failed") and j,
                        120, 0.1, "the embedding jobs")
        assert done["state"] == "succeeded", done

    # Listing: newest first, one page at a time, per key, by state.
    page1 = a.get("/v1/jobs", params={"limit": 1}).json()
    assert [j["job_id"] for j in page1["jobs"]] == [embed["job_id"]] and page1["next_cursor"]
    page2 = a.get("/v1/jobs", params={"limit": 1, "cursor": page1["next_cursor"]}).json()
    assert [j["job_id"] for j in page2["jobs"]] == [augment["job_id"]] and page2["next_cursor"] is None
    assert [j["job_id"] for j in a.get("/v1/jobs", params={"state": "succeeded"}).json()["jobs"]] == \
        [embed["job_id"], augment["job_id"]]
    assert a.get("/v1/jobs", params={"state": "running"}).json() == {"jobs": [], "next_cursor": None}
    assert [j["job_id"] for j in b.get("/v1/jobs").json()["jobs"]] == [other["job_id"]]
    assert b.get(f"/v1/jobs/{augment['job_id']}").status_code == 404  # another key's job does not exist for B
    assert b.get(f"/v1/jobs/{augment['job_id']}/outputs").status_code == 404
    assert a.get("/v1/jobs", params={"cursor": "not-a-cursor"}).json()["error"] == "invalid_cursor"

    # Download the augmentation as tar, in two requests (the second resumes with Range).
    full = a.get(f"/v1/jobs/{augment['job_id']}/outputs")
    assert full.status_code == 200 and full.headers["accept-ranges"] == "bytes"
    assert int(full.headers["content-length"]) == len(full.content)
    cut = len(full.content) // 3
    rest = a.get(f"/v1/jobs/{augment['job_id']}/outputs",
                 headers={"Range": f"bytes={cut}-", "If-Range": full.headers["etag"]})
    assert rest.status_code == 206 and rest.headers["content-range"] == f"bytes {cut}-{len(full.content) - 1}/{len(full.content)}"
    assert full.content[:cut] + rest.content == full.content
    with tarfile.open(fileobj=io.BytesIO(full.content)) as tf:
        names = {m.name for m in tf.getmembers()}
        manifest = tf.extractfile(f"{augment['job_id']}/manifest.jsonl").read().decode()
    prefix = f"{augment['job_id']}/"
    assert names == {prefix + n for n in expected_outputs(sources, 2) | {"manifest.jsonl"}}
    assert len(manifest.splitlines()) == 2 * N_FACES
    assert a.get(f"/v1/jobs/{augment['job_id']}/outputs",
                 headers={"Range": f"bytes={len(full.content)}-"}).status_code == 416

    # Download the embeddings as zip: the same file `lrface embed` writes for the same faces.
    zipped = a.get(f"/v1/jobs/{embed['job_id']}/outputs", params={"format": "zip"})
    assert zipped.status_code == 200 and zipped.headers["content-type"] == "application/zip"
    with zipfile.ZipFile(io.BytesIO(zipped.content)) as zf:
        assert sorted(zf.namelist()) == [f"{embed['job_id']}/embeddings.npz", f"{embed['job_id']}/manifest.jsonl"]
        with np.load(io.BytesIO(zf.read(f"{embed['job_id']}/embeddings.npz"))) as npz:
            job_paths, job_emb = list(npz["paths"]), npz["embeddings"]
    assert main_embed([str(src), "--out", str(tmp_path / "cli.npz"), "--model", str(embedder_path)]) == 0
    with np.load(tmp_path / "cli.npz") as npz:
        cli_paths, cli_emb = list(npz["paths"]), npz["embeddings"]
    assert job_paths == cli_paths == sources
    assert job_emb.dtype == np.float32 and job_emb.shape == cli_emb.shape
    np.testing.assert_allclose(job_emb, cli_emb, atol=1e-5)

    # Metrics: images processed by the workers and job durations (read from Redis by the API).
    metrics = a.get("/metrics").text
    assert re.search(r'lrface_job_images_processed_total\{kind="augment",status="done"\} 12\.0', metrics), metrics
    assert re.search(r'lrface_job_images_processed_total\{kind="embed",status="done"\} 24\.0', metrics)
    assert re.search(r'lrface_job_duration_seconds_count\{state="succeeded"\} 3\.0', metrics)

    # Purge: files and state go; nothing else is touched.
    jobs_root = tmp_path / "jobs"
    for job_id in (augment["job_id"], embed["job_id"]):
        # (the uploaded input went when the job finished: issue #15)
        assert (jobs_root / job_id).is_dir() and not (jobs_root / "_uploads" / job_id).exists()
        assert b.delete(f"/v1/jobs/{job_id}", params={"purge": "true"}).status_code == 404  # not B's
        r = a.delete(f"/v1/jobs/{job_id}", params={"purge": "true"})
        assert r.status_code == 200 and r.json() == {"job_id": job_id, "purged": True, "state": "succeeded"}
        assert a.get(f"/v1/jobs/{job_id}").status_code == 404
        assert not (jobs_root / job_id).exists() and not (jobs_root / "_uploads" / job_id).exists()
    assert a.get("/v1/jobs").json() == {"jobs": [], "next_cursor": None}
    assert (jobs_root / other["job_id"]).is_dir() and files_under(src) == set(sources)
