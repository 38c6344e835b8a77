"""Job state over its life on a real Redis: per-image progress counted once, listing pages, purging and retention
that touch nothing outside a job's own folders, and jobs over RecordIO datasets (server-side and uploaded)."""
from __future__ import annotations

import json
import os
import time

import numpy as np
import pytest

from lrface.service.jobs.inputs import resolve_input_dir
from lrface.service.jobs.lifecycle import purge_expired_jobs, purge_job, submit_job
from lrface.service.jobs.params import JobInputError, JobParams, new_job_id
from lrface.service.jobs.store import JobStore
from lrface.service.settings import Settings
from service_helpers import (
    HR_FACES,
    RAW_PHOTOS,
    TEST_REDIS_URL,
    forget_namespace,
    make_faces,
    png_bytes,
    redis_or_skip,
    service_env,
    start_worker,
    unique_namespace,
    wait_for,
)
from test_recordio import insightface_dataset

pytestmark = [pytest.mark.redis, pytest.mark.process]


@pytest.fixture
def jobs(tmp_path, mrgan_path, embedder_path):
    client = redis_or_skip()
    prefix, queue = unique_namespace()
    settings = Settings(broker_url=TEST_REDIS_URL, key_prefix=prefix, queue=queue, chunk_size=4,
                        data_root=tmp_path / "data", jobs_root=tmp_path / "jobs", state_dir=tmp_path / "state",
                        load_models_on_startup=False)
    env = service_env(tmp_path, mrgan_path, embedder_path, LRFACE_BROKER_URL=TEST_REDIS_URL, LRFACE_KEY_PREFIX=prefix,
                      LRFACE_QUEUE=queue, LRFACE_CHUNK_SIZE=4)
    store = JobStore.from_settings(settings)
    make_faces(tmp_path / "data" / "faces", 8)

    class Jobs:
        pass

    j = Jobs()
    j.tmp, j.settings, j.store, j.env, j.workers = tmp_path, settings, store, env, []

    def submit(folder: str = "faces", params: JobParams = JobParams(1, 0), enqueue=lambda *a: None) -> str:
        job_id = new_job_id()
        submit_job(store, settings, job_id=job_id, params=params, input_dir=settings.data_root_path / folder,
                   allowed_root=settings.data_root_path, input_label=folder, enqueue=enqueue)
        return job_id

    j.submit = submit
    yield j
    for w in j.workers:
        w.stop()
    forget_namespace(client, prefix, queue)
    store.redis.close()


def test_per_image_progress_grows_and_each_image_is_counted_once(jobs):
    job_id = jobs.submit()  # 8 faces, chunks of 4
    store = jobs.store
    store.mark_running(job_id)
    store.report_progress(job_id, 0, 2, 1)
    store.report_progress(job_id, 1, 1, 0)
    job = store.get(job_id)
    assert (job["done"], job["failed"], job["chunks_done"]) == (3, 1, 0)
    assert job["rate"] is not None and job["rate"] > 0 and job["eta_s"] is not None
    store.report_progress(job_id, 0, 1, 0)  # a redelivered chunk starting over does not move the counts back
    assert (store.get(job_id)["done"], store.get(job_id)["failed"]) == (3, 1)
    results = [{"source": f"s{i}", "status": "done"} for i in range(3)] + \
        [{"source": "bad", "status": "failed", "reason": "corrupt", "message": "x"}]
    store.record_chunk(job_id, 0, results)
    job = store.get(job_id)
    assert (job["done"], job["failed"], job["chunks_done"]) == (4, 1, 1)  # chunk 0 counted, chunk 1 in flight
    store.report_progress(job_id, 0, 4, 0)  # late progress of a counted chunk is ignored
    store.record_chunk(job_id, 0, results)  # and so is counting it again
    assert (store.get(job_id)["done"], store.get(job_id)["failed"]) == (4, 1)
    assert store.image_stats() == {("augment", "done"): 3, ("augment", "failed"): 1}


def test_listing_pages_through_every_job_once_newest_first_also_with_equal_times(jobs):
    ids = [jobs.submit() for _ in range(7)]
    key = f"{jobs.settings.key_prefix}jobs"
    same = time.time()
    for job_id in ids[2:6]:  # four jobs created "at the same millisecond"
        jobs.store.redis.zadd(key, {job_id: same})
    expected = [m for m, _ in jobs.store.redis.zrevrange(key, 0, -1, withscores=True)]
    pages, cursor = [], None
    while True:
        page, cursor = jobs.store.list_jobs(2, cursor)
        pages.append([j["job_id"] for j in page])
        if cursor is None:
            break
    assert [i for p in pages for i in p] == expected and sorted(expected) == sorted(ids)
    assert all(len(p) == 2 for p in pages[:-1])
    jobs.store.cancel(ids[0])
    assert [j["job_id"] for j in jobs.store.list_jobs(10, state="cancelled")[0]] == [ids[0]]
    with pytest.raises(JobInputError):
        jobs.store.list_jobs(2, "bm90IG91cnM")


def test_purging_removes_the_jobs_files_and_state_and_nothing_else(jobs):
    outside = jobs.tmp / "outside"
    outside.mkdir()
    (outside / "keep.txt").write_text("not the job's")
    job_id, sibling = jobs.submit(), jobs.submit()
    out = jobs.settings.jobs_root_path / job_id
    (out / "sub").mkdir(parents=True)
    (out / "sub" / "a_0.png").write_bytes(b"x")
    os.symlink(outside, out / "link-to-dir")
    os.symlink(outside / "keep.txt", out / "sub" / "link-to-file")
    upload = jobs.settings.uploads_root_path / job_id
    upload.mkdir(parents=True)
    (upload / "face.png").write_bytes(b"x")
    (jobs.settings.jobs_root_path / sibling / "b_0.png").write_bytes(b"y")

    purge_job(jobs.store, jobs.settings, job_id)
    assert not out.exists() and not upload.exists()
    assert jobs.store.get(job_id) is None and jobs.store.is_cancelled(job_id)  # queued chunks do nothing
    # A chunk that was running during the purge finishes without bringing the job back.
    jobs.store.mark_running(job_id, "model")
    jobs.store.report_progress(job_id, 0, 2, 0)
    assert jobs.store.record_chunk(job_id, 0, [{"source": "a.png", "status": "done"}])[0] is None
    jobs.store.fail(job_id, "late")
    assert sorted(jobs.store.redis.keys(f"{jobs.settings.key_prefix}job:{job_id}*")) == \
        [f"{jobs.settings.key_prefix}job:{job_id}:cancel"]
    assert job_id not in [j["job_id"] for j in jobs.store.list_jobs(10)[0]]
    assert (outside / "keep.txt").read_text() == "not the job's" and sorted(p.name for p in outside.iterdir()) == ["keep.txt"]
    assert (jobs.settings.jobs_root_path / sibling / "b_0.png").read_bytes() == b"y"
    assert jobs.store.get(sibling) is not None
    assert sorted((jobs.tmp / "data" / "faces").rglob("*.png"))  # the input folder is left alone

    # A job folder replaced by a link: the link goes, never what it points to.
    linked = jobs.submit()
    (jobs.settings.jobs_root_path / linked).rmdir()
    os.symlink(outside, jobs.settings.jobs_root_path / linked)
    purge_job(jobs.store, jobs.settings, linked)
    assert not (jobs.settings.jobs_root_path / linked).exists() and (outside / "keep.txt").is_file()


def test_retention_purges_jobs_finished_longer_ago_than_the_setting(jobs):
    old, recent, running = jobs.submit(), jobs.submit(), jobs.submit()
    for job_id in (old, recent):
        jobs.store.transition(job_id, "succeeded", ("queued",))
    now = time.time()
    jobs.store.redis.hset(jobs.store.key(old), "finished_at", f"{now - 7200:.3f}")
    jobs.store.redis.zadd(f"{jobs.settings.key_prefix}jobs", {old: now - 7300, running: now - 7300})
    settings = jobs.settings.model_copy(update={"job_retention_s": 3600})
    assert purge_expired_jobs(jobs.store, jobs.settings, now) == []  # 0: retention off
    assert purge_expired_jobs(jobs.store, settings, now) == [old]
    assert not (settings.jobs_root_path / old).exists() and (settings.jobs_root_path / recent).is_dir()
    assert jobs.store.get(old) is None and jobs.store.get(recent) and jobs.store.get(running)


def test_the_workers_sweeper_applies_the_retention(jobs, monkeypatch):
    from lrface.service import tasks

    finished = jobs.submit()
    jobs.store.transition(finished, "succeeded", ("queued",))
    jobs.store.redis.hset(jobs.store.key(finished), "finished_at", f"{time.time() - 100:.3f}")
    jobs.store.redis.zadd(f"{jobs.settings.key_prefix}jobs", {finished: time.time() - 200})
    monkeypatch.setattr(tasks, "get_settings", lambda: jobs.settings.model_copy(update={"job_retention_s": 50}))
    monkeypatch.setattr(tasks, "get_store", lambda: jobs.store)
    tasks.sweep_once()
    assert jobs.store.get(finished) is None and not (jobs.settings.jobs_root_path / finished).exists()


def test_a_rec_whose_index_leads_outside_the_data_root_is_refused(jobs):
    data = jobs.tmp / "data"
    insightface_dataset(data / "train.rec", [0, 1])
    assert resolve_input_dir(data, "train.rec") == (data / "train.rec").resolve()
    (data / "ds").mkdir()
    os.symlink(data / "train.rec", data / "ds" / "linked.rec")
    os.replace(data / "train.idx", jobs.tmp / "train.idx")
    os.symlink(jobs.tmp / "train.idx", data / "train.idx")
    with pytest.raises(JobInputError) as err:
        resolve_input_dir(data, "train.rec")
    assert err.value.status_code == 403


def test_jobs_over_a_server_side_rec_and_an_uploaded_rec(jobs, monkeypatch):
    from fastapi.testclient import TestClient

    from lrface.service import tasks
    from lrface.service.api import create_app
    from lrface.service.celery_app import make_celery

    celery = make_celery(jobs.settings)  # (this process's own Celery app is configured from its environment)
    monkeypatch.setattr(tasks, "enqueue_chunk", lambda job_id, index, paths: celery.send_task(
        "lrface.process_chunk", args=(job_id, index, paths), queue=jobs.settings.queue))

    data = jobs.tmp / "data"
    (data / "ds").mkdir()
    names = insightface_dataset(data / "ds" / "train.rec", [3, 3, 8, 11], corrupt={2})
    good = [n for n in names if n != "3/2"]
    rec_bytes = (data / "ds" / "train.rec").read_bytes()
    with TestClient(create_app(jobs.settings)) as api:
        r = api.post("/v1/jobs", json={"input_dir": "ds/train.rec", "variants": 2, "seed": 1})
        assert r.status_code == 202, r.text
        augment = r.json()
        r = api.post("/v1/jobs", files={"archive": ("train.rec", rec_bytes, "application/octet-stream")},
                     data={"kind": "embed"})
        assert r.status_code == 202, r.text
        embed = r.json()
        assert augment["counts"]["total"] == embed["counts"]["total"] == 4
        jobs.workers.append(start_worker(jobs.env, jobs.tmp / "worker.log"))
        for job in (augment, embed):
            done = wait_for(lambda: (j := api.get(f"/v1/jobs/{job['job_id']}").json())["state"] in
                            ("succeeded", "failed") and j, 120, 0.1, "the RecordIO jobs")
            assert done["state"] == "succeeded", done
            assert (done["counts"]["done"], done["counts"]["failed"]) == (3, 1)
            assert [(e["source"], e["reason"]) for e in done["errors"]] == [("3/2", "not_an_image")]
    out = jobs.settings.jobs_root_path / augment["job_id"]
    written = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.png"))
    assert written == sorted(f"{n}_{k}.png" for n in good for k in range(2))
    with np.load(jobs.settings.jobs_root_path / embed["job_id"] / "embeddings.npz") as npz:
        assert list(npz["paths"]) == good
        assert len(npz["embeddings"]) == 3
    rows = [json.loads(line) for line in (jobs.settings.jobs_root_path / embed["job_id"] / "manifest.jsonl").read_text().splitlines()]
    assert rows == [{"source": n, "row": i} for i, n in enumerate(good)]


def test_an_embedding_job_aligns_each_image_as_lrface_embed_does(jobs, embedder_path):
    """Photos get their face detected and aligned, aligned crops are taken as they are, a photo without a face is a
    no_face failure: the job and the command share that decision, and so write the same embeddings."""
    from lrface.service.celery_app import make_celery
    from lrface.service.offline import main_embed

    src = jobs.tmp / "data" / "mixed"
    src.mkdir()
    (src / "a_photo.jpg").write_bytes(RAW_PHOTOS[0].read_bytes())
    (src / "b_crop.jpg").write_bytes(HR_FACES[0].read_bytes())
    (src / "c_landscape.png").write_bytes(png_bytes(np.full((200, 300, 3), 128, np.uint8)))
    celery = make_celery(jobs.settings)
    job_id = jobs.submit("mixed", JobParams.embedding(), enqueue=lambda job_id, index, paths: celery.send_task(
        "lrface.process_chunk", args=(job_id, index, paths), queue=jobs.settings.queue))
    jobs.workers.append(start_worker(jobs.env, jobs.tmp / "worker.log"))
    job = wait_for(lambda: (j := jobs.store.get(job_id))["state"] in ("succeeded", "failed") and j, 120, 0.1,
                   "the embedding job")
    assert job["state"] == "succeeded", job
    assert [(e["source"], e["reason"]) for e in job["errors"]] == [("c_landscape.png", "no_face")]
    assert main_embed([str(src), "--out", str(jobs.tmp / "cli.npz"), "--model", str(embedder_path)]) == 0
    job_npz = jobs.settings.jobs_root_path / job_id / "embeddings.npz"
    with np.load(job_npz) as npz, np.load(jobs.tmp / "cli.npz") as cli:
        assert list(npz["paths"]) == list(cli["paths"]) == ["a_photo.jpg", "b_crop.jpg"]
        np.testing.assert_allclose(npz["embeddings"], cli["embeddings"], atol=1e-5)
