"""Uploads cleaned up, errors without server paths, and one final state when DELETE races the finalizer (issue
#15, item 7).

Over real HTTP with a real worker (`lrface serve --workers-in-process 1` on the test Redis):
- an uploaded archive is gone once extracted, and its extracted folder once the job succeeded, failed or was
  cancelled;
- at start, `lrface serve` (embedded broker) removes upload folders of vanished or finished jobs (what a crash
  mid-extraction leaves);
and in process, with the real Redis: a DELETE that lands while the finalizer writes the manifest leaves a
`cancelled` job without a manifest, one that lands after it a `succeeded` job (DELETE answers 409); job errors
name settings instead of the server's folders.
"""
from __future__ import annotations

import io
import json
import zipfile
from types import SimpleNamespace

import pytest

from lrface.service.jobs.lifecycle import submit_job
from lrface.service.jobs.params import JobParams, new_job_id
from lrface.service.jobs.store import JobStore
from lrface.service.settings import Settings
from service_helpers import (
    HR_FACES,
    TEST_REDIS_URL,
    forget_namespace,
    make_faces,
    redis_or_skip,
    serve,
    served_on_test_redis,
    service_env,
    unique_namespace,
    wait_for,
)


def _zip(faces: int, broken: int = 0) -> bytes:
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as zf:
        for i in range(faces):
            zf.writestr(f"f{i}.jpg", HR_FACES[i % len(HR_FACES)].read_bytes())
        for i in range(broken):
            zf.writestr(f"broken{i}.png", b"not an image at all")
    return archive.getvalue()


@pytest.fixture(scope="module")
def server(tmp_path_factory, mrgan_path, embedder_path):
    tmp = tmp_path_factory.mktemp("cleanup")
    with served_on_test_redis(tmp, mrgan_path, embedder_path, "--workers-in-process", "1") as srv:
        yield srv


def _uploads(server) -> list[str]:
    root = server.tmp / "jobs" / "_uploads"
    return sorted(p.name for p in root.iterdir()) if root.exists() else []


def _wait_state(http, job_id: str, states: tuple[str, ...], timeout: float = 240) -> dict:
    def done():
        job = http.get(f"/v1/jobs/{job_id}").json()
        return job if job["state"] in states else None

    return wait_for(done, timeout, 0.2, f"job {job_id} to reach {states}")


def test_uploads_are_removed_once_extracted_and_once_the_job_finished(server):
    with server.client() as http:
        ok = http.post("/v1/jobs", files={"archive": ("ok.zip", _zip(2), "application/zip")}, data={"variants": "1"})
        assert ok.status_code == 202, ok.text
        job_id = ok.json()["job_id"]
        assert f"{job_id}.upload" not in _uploads(server), "the archive stays after extraction"
        assert _wait_state(http, job_id, ("succeeded",))["counts"]["done"] == 2
        wait_for(lambda: job_id not in _uploads(server), 30, 0.2, "the extracted input to go")

        bad = http.post("/v1/jobs", files={"archive": ("bad.zip", _zip(0, broken=2), "application/zip")},
                        data={"variants": "1"})
        assert bad.status_code == 202, bad.text
        failed = _wait_state(http, bad.json()["job_id"], ("failed",))
        assert "/" not in (failed["error"] or ""), failed["error"]
        wait_for(lambda: bad.json()["job_id"] not in _uploads(server), 30, 0.2, "the failed job's input to go")

        many = http.post("/v1/jobs", files={"archive": ("many.zip", _zip(40), "application/zip")},
                         data={"variants": "8"})
        assert many.status_code == 202, many.text
        cancelled = http.delete(f"/v1/jobs/{many.json()['job_id']}")
        assert cancelled.status_code == 200 and cancelled.json()["state"] == "cancelled", cancelled.text
        assert many.json()["job_id"] not in _uploads(server)
        assert _uploads(server) == []


def test_lrface_serve_removes_orphaned_upload_folders_at_start(tmp_path, mrgan_path, embedder_path):
    env = service_env(tmp_path, mrgan_path, embedder_path)  # the embedded broker
    uploads = tmp_path / "jobs" / "_uploads"
    orphan, half = new_job_id(), new_job_id()
    (uploads / orphan / "sub").mkdir(parents=True)
    (uploads / orphan / "sub" / "a.jpg").write_bytes(HR_FACES[0].read_bytes())
    (uploads / f"{half}.upload").write_bytes(b"PK" + b"\0" * 1000)
    (uploads / "not-a-job").mkdir()
    srv = serve(env, tmp_path, "--workers-in-process", "0")
    try:
        assert sorted(p.name for p in uploads.iterdir()) == ["not-a-job"]
    finally:
        srv.stop()


# -- in process, with the real Redis ---------------------------------------------------------------------------

@pytest.fixture
def store_settings(tmp_path):
    client = redis_or_skip()
    prefix, queue = unique_namespace()
    settings = Settings(broker_url=TEST_REDIS_URL, key_prefix=prefix, queue=queue, data_root=tmp_path / "data",
                        jobs_root=tmp_path / "jobs", state_dir=tmp_path / "state")
    store = JobStore.from_settings(settings)
    yield store, settings
    store.redis.close()
    forget_namespace(client, prefix, queue)


def _finished_chunks_job(store, settings, tmp_path) -> str:
    make_faces(tmp_path / "data" / "faces", 2)
    job_id = new_job_id()
    submit_job(store, settings, job_id=job_id, params=JobParams(1, 1), input_dir=settings.data_root_path / "faces",
               allowed_root=settings.data_root_path, input_label="faces", enqueue=lambda *a: None)
    store.record_chunk(job_id, 0, [{"source": "x", "status": "done"}])
    return job_id


def _finalize_with(monkeypatch, store, settings, job_id: str, during_write) -> None:
    """Run the real finalizer (no model: the manifest writer is replaced by one that calls `during_write`)."""
    import lrface.core.augment
    from lrface.service import tasks

    def fake_write_manifest(synthesizer, output_dir, sources, *args):
        (output_dir / "manifest.jsonl").write_text(json.dumps({"source": "x"}) + "\n")
        during_write()

    monkeypatch.setattr(lrface.core.augment, "write_manifest", fake_write_manifest)
    monkeypatch.setattr(tasks, "get_store", lambda: store)
    monkeypatch.setattr(tasks, "get_synthesizer", lambda: None)
    monkeypatch.setattr(tasks, "get_settings", lambda: settings)
    fake_self = SimpleNamespace(request=SimpleNamespace(retries=0))
    tasks._finalize_job(fake_self, job_id)


def test_a_delete_during_finalizing_gives_one_consistent_final_state(monkeypatch, store_settings, tmp_path):
    store, settings = store_settings
    # DELETE lands while the manifest is being written: cancelled, and no manifest.
    job_id = _finished_chunks_job(store, settings, tmp_path)
    _finalize_with(monkeypatch, store, settings, job_id, lambda: store.cancel(job_id))
    job = store.get(job_id)
    assert job["state"] == "cancelled"
    assert not (settings.jobs_root_path / job_id / "manifest.jsonl").exists()

    # DELETE lands just after the finalizer: the job succeeded, and stays so.
    job_id = _finished_chunks_job(store, settings, tmp_path)
    _finalize_with(monkeypatch, store, settings, job_id, lambda: None)
    changed, state = store.cancel(job_id)
    assert (changed, state) == (False, "succeeded")
    assert (settings.jobs_root_path / job_id / "manifest.jsonl").exists()


def test_job_errors_name_settings_not_server_paths(tmp_path):
    from lrface.service.redact import error_text

    settings = Settings(jobs_root=tmp_path / "jobs", data_root=tmp_path / "data", state_dir=tmp_path / "state")
    exc = PermissionError(13, "Permission denied", str(settings.jobs_root_path / "abc" / "manifest.jsonl"))
    text = error_text(exc, settings)
    assert str(tmp_path) not in text and "$LRFACE_JOBS_ROOT/abc/manifest.jsonl" in text
    exc = OSError(2, "No such file", str(settings.uploads_root_path / "x"))
    assert "$LRFACE_UPLOADS_ROOT/x" in error_text(exc, settings)
    assert len(error_text(ValueError("v" * 100_000), settings)) < 600
