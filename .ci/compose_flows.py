"""The four user flows against a running `docker compose` stack, from outside (run by .ci/compose-test.sh):

1. synthesize: LR variants of a face;
2. embed + verify: embeddings of two faces, and a same-person decision; one face with the lite embedder;
3. a zip job to completion, with the stack's 2 workers both taking part, its outputs downloaded;
4. a worker container SIGKILLed mid-job (`docker kill`): the job still succeeds, one output per (face, variant).
"""
from __future__ import annotations

import argparse
import io
import json
import subprocess
import sys
import tarfile
import time
import zipfile
from pathlib import Path

import httpx

TESTS = Path(__file__).resolve().parents[1] / "tests"
FACES = sorted((TESTS / "fixtures" / "hr").glob("*/*.jpg"))
sys.path.insert(0, str(TESTS))
from service_helpers import wait_for  # noqa: E402  (the service tests' poll loop; run with the test venv)


def face(i: int) -> tuple[str, bytes, str]:
    path = FACES[i % len(FACES)]
    return path.name, path.read_bytes(), "image/jpeg"


def zip_of(n: int) -> bytes:
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as zf:
        for i in range(n):
            zf.writestr(f"group{i % 3}/face_{i:03d}.jpg", face(i)[1])
    return archive.getvalue()


def compose(project: str, *args: str) -> str:
    return subprocess.run(["docker", "compose", "-p", project, *args], check=True, capture_output=True,
                          text=True).stdout


def submit(http: httpx.Client, n: int, variants: int) -> str:
    r = http.post("/v1/jobs", files={"archive": ("faces.zip", zip_of(n), "application/zip")},
                  data={"variants": str(variants), "seed": "3"})
    assert r.status_code == 202, r.text
    return r.json()["job_id"]


def finished(http: httpx.Client, job_id: str, timeout: float) -> dict:
    def done():
        job = http.get(f"/v1/jobs/{job_id}").json()
        return job if job["state"] in ("succeeded", "failed", "cancelled") else None

    return wait_for(done, timeout, interval=0.5, what=f"job {job_id} to finish")


def check_outputs(http: httpx.Client, job_id: str, n: int, variants: int) -> None:
    manifest = http.get(f"/v1/jobs/{job_id}/manifest")
    assert manifest.status_code == 200, manifest.text
    rows = [json.loads(line) for line in manifest.text.splitlines()]
    assert len(rows) == n * variants and len({r["output"] for r in rows}) == n * variants, len(rows)
    tar = http.get(f"/v1/jobs/{job_id}/outputs")
    assert tar.status_code == 200
    with tarfile.open(fileobj=io.BytesIO(tar.content)) as tf:
        pngs = [m for m in tf.getmembers() if m.name.endswith(".png")]
    assert len(pngs) == n * variants, len(pngs)


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--base-url", required=True)
    p.add_argument("--project", required=True)
    args = p.parse_args()
    http = httpx.Client(base_url=args.base_url, timeout=120)
    t0 = time.monotonic()

    ready = http.get("/readyz")
    assert ready.status_code == 200, ready.text

    # 1. synthesize
    r = http.post("/v1/synthesize", files={"image": face(0)}, data={"variants": "3", "seed": "1"})
    assert r.status_code == 200 and len(r.json()["variants"]) == 3, r.text
    print(f"flow 1 (synthesize): ok, {time.monotonic() - t0:.1f} s", flush=True)

    # 2. embed + verify
    t = time.monotonic()
    r = http.post("/v1/embed", files=[("images", face(0)), ("images", face(1))])
    assert r.status_code == 200 and len(r.json()["embeddings"]) == 2, r.text
    r = http.post("/v1/verify", files={"image_a": face(2), "image_b": face(2)})
    assert r.status_code == 200 and r.json()["same_person"] is True, r.text
    full_id = r.json()["model_id"]
    r = http.post("/v1/embed", files=[("images", face(0))], data={"model": "lite"})  # the lite file is in the image
    assert r.status_code == 200 and r.json()["model_id"] != full_id and len(r.json()["embeddings"]) == 1, r.text
    print(f"flow 2 (embed + verify, and embed with model=lite): ok, {time.monotonic() - t:.1f} s", flush=True)

    # 3. a zip job to completion on the 2 workers
    t = time.monotonic()
    workers = compose(args.project, "ps", "-q", "worker").split()
    assert len(workers) == 2, workers
    job_id = submit(http, 32, 2)
    job = finished(http, job_id, 600)
    assert job["state"] == "succeeded" and job["counts"]["done"] == 32, job
    check_outputs(http, job_id, 32, 2)
    print(f"flow 3 (zip job, 32 faces x 2 variants, 2 workers): ok, {time.monotonic() - t:.1f} s", flush=True)

    # 4. a worker container SIGKILLed mid-job
    t = time.monotonic()
    job_id = submit(http, 64, 2)
    wait_for(lambda: http.get(f"/v1/jobs/{job_id}").json()["counts"]["done"] >= 4, 300, interval=0.2,
             what="the job to get going")
    job = http.get(f"/v1/jobs/{job_id}").json()
    assert job["state"] == "running" and job["counts"]["done"] < 64, job
    subprocess.run(["docker", "kill", "--signal", "KILL", workers[0]], check=True, capture_output=True)
    job = finished(http, job_id, 600)
    assert job["state"] == "succeeded" and (job["counts"]["done"], job["counts"]["failed"]) == (64, 0), job
    check_outputs(http, job_id, 64, 2)
    print(f"flow 4 (a worker SIGKILLed mid-job, 64 faces x 2 variants): ok, {time.monotonic() - t:.1f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
