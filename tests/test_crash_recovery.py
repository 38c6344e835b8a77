"""Crash recovery of `lrface serve` with its embedded broker: a job interrupted by a crash finishes after a restart.

The visibility timeout (1 h) and the stall sweeper (300 s) keep their defaults here, so a job that finishes soon
after the restart shows that `lrface serve` handed out again, at once, the chunk its dead worker held
(lrface.service.server.recover_embedded_jobs): with the whole process group SIGKILLed, with only the main process
SIGKILLed (its children follow it), with only the embedded worker SIGKILLed (its supervisor restarts it), and
with the process group SIGTERMed (a clean stop, the job goes on after the restart).
Each time: exactly one output per (image, variant), a manifest that matches the disk, no temp file.
The same for an embedding job (one row per face in embeddings.npz and the manifest), and issue #15's own check:
300 faces x 4 variants with the default chunk size, the process group SIGKILLed mid-job, `succeeded` within 60 s
of the restart with 1,200 outputs (marked `slow`: about 1.5 minutes; it runs in the default test command).
"""
from __future__ import annotations

import os
import signal
from pathlib import Path

import httpx
import pytest

from service_helpers import check_job_outputs, child_pids, make_faces, serve, service_env, wait_for

pytestmark = [pytest.mark.process, pytest.mark.slow]

FACES, VARIANTS, CHUNK = 40, 2, 4
FINISHED = ("succeeded", "failed", "cancelled")


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _gone(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def _job(server, job_id: str) -> dict:
    return httpx.get(f"{server.base_url}/v1/jobs/{job_id}", timeout=10).json()


@pytest.mark.parametrize("crash", ["group-sigkill", "main-sigkill", "worker-sigkill", "group-sigterm"])
def test_a_job_interrupted_by_a_crash_finishes_after_a_restart(tmp_path, mrgan_path, embedder_path, crash):
    env = service_env(tmp_path, mrgan_path, embedder_path, LRFACE_CHUNK_SIZE=CHUNK)
    sources = make_faces(tmp_path / "data" / "faces", FACES, scale=2)
    server = serve(env, tmp_path, new_session=True)
    try:
        r = httpx.post(f"{server.base_url}/v1/jobs", json={"input_dir": "faces", "variants": VARIANTS, "seed": 5},
                       timeout=30)
        assert r.status_code == 202, r.text
        job_id = r.json()["job_id"]
        # Mid-way: some chunks counted, others not started, one being worked on.
        job = wait_for(lambda: (j := _job(server, job_id))["counts"]["done"] >= CHUNK and j, 120, 0.02,
                       "the job to get going")
        assert job["state"] == "running" and job["counts"]["done"] < FACES, job
        children = child_pids(server.proc.pid)
        if crash.startswith("group-"):
            os.killpg(server.proc.pid, signal.SIGKILL if crash == "group-sigkill" else signal.SIGTERM)
        elif crash == "main-sigkill":
            server.proc.send_signal(signal.SIGKILL)
        else:
            worker = [pid for pid in children if "celery" in _cmdline(pid)]
            assert len(worker) == 1, [_cmdline(pid) for pid in children]
            os.kill(worker[0], signal.SIGKILL)
        if crash != "worker-sigkill":
            server.proc.wait(40)
            wait_for(lambda: all(_gone(pid) for pid in children), 30, 0.1, "the old children to exit")
            server.stop()
            server = serve(env, tmp_path, new_session=True)
        done = wait_for(lambda: (j := _job(server, job_id))["state"] in FINISHED and j, 60, 0.2,
                        "the interrupted job to finish")
    finally:
        server.stop()
    assert done["state"] == "succeeded", done
    assert (done["counts"]["total"], done["counts"]["done"], done["counts"]["failed"]) == (FACES, FACES, 0), done
    output_dir = tmp_path / "jobs" / job_id
    assert not [p.name for p in output_dir.rglob("*") if ".tmp" in p.name]
    check_job_outputs(output_dir, sources, VARIANTS, seed=5)


def _crash_group_and_restart(server, env, tmp_path):
    """SIGKILL `lrface serve`'s whole process group, wait for every child to be gone, start it again."""
    children = child_pids(server.proc.pid)
    os.killpg(server.proc.pid, signal.SIGKILL)
    server.proc.wait(40)
    wait_for(lambda: all(_gone(pid) for pid in children), 30, 0.1, "the old children to exit")
    server.stop()
    return serve(env, tmp_path, new_session=True)


def test_an_embedding_job_interrupted_by_a_crash_finishes_after_a_restart(tmp_path, mrgan_path, embedder_path):
    import numpy as np

    faces, chunk = 60, 2
    env = service_env(tmp_path, mrgan_path, embedder_path, LRFACE_CHUNK_SIZE=chunk)
    sources = make_faces(tmp_path / "data" / "faces", faces)
    server = serve(env, tmp_path, new_session=True)
    try:
        r = httpx.post(f"{server.base_url}/v1/jobs", json={"input_dir": "faces", "kind": "embed"}, timeout=30)
        assert r.status_code == 202, r.text
        job_id = r.json()["job_id"]
        job = wait_for(lambda: (j := _job(server, job_id))["counts"]["done"] >= 2 * chunk and j, 120, 0.02,
                       "the job to get going")
        assert job["state"] == "running" and job["counts"]["done"] < faces, job
        server = _crash_group_and_restart(server, env, tmp_path)
        try:
            done = wait_for(lambda: (j := _job(server, job_id))["state"] in FINISHED and j, 60, 0.2,
                            "the interrupted job to finish")
        except AssertionError:
            print("after 60 s:", _job(server, job_id))
            print(server.log_tail(3000))
            raise
    finally:
        server.stop()
    assert done["state"] == "succeeded", done
    assert (done["counts"]["total"], done["counts"]["done"], done["counts"]["failed"]) == (faces, faces, 0), done
    output_dir = tmp_path / "jobs" / job_id
    assert sorted(p.name for p in output_dir.iterdir()) == ["embeddings.npz", "errors.jsonl", "manifest.jsonl"] \
        or sorted(p.name for p in output_dir.iterdir()) == ["embeddings.npz", "manifest.jsonl"]
    with np.load(output_dir / "embeddings.npz") as npz:
        paths, embeddings = list(npz["paths"]), npz["embeddings"]
    assert sorted(paths) == sorted(sources) and len(set(paths)) == faces and embeddings.shape[0] == faces
    assert np.allclose(np.linalg.norm(embeddings, axis=1), 1.0, atol=1e-3)
    rows = (output_dir / "manifest.jsonl").read_text().splitlines()
    assert len(rows) == faces and len(set(rows)) == faces


@pytest.mark.slow
def test_the_issue_check_300_faces_x_4_variants_sigkilled_mid_job(tmp_path, mrgan_path, embedder_path):
    """Issue #15's check, with `lrface serve`'s defaults (chunks of 64): the process group SIGKILLed mid-job and
    started again; `succeeded` within 60 s of the restart, 1,200 outputs and manifest rows, no duplicate, no temp
    file."""
    import time

    faces, variants = 300, 4
    env = service_env(tmp_path, mrgan_path, embedder_path)
    sources = make_faces(tmp_path / "data" / "faces", faces)
    server = serve(env, tmp_path, new_session=True)
    try:
        r = httpx.post(f"{server.base_url}/v1/jobs", json={"input_dir": "faces", "variants": variants, "seed": 9},
                       timeout=30)
        assert r.status_code == 202, r.text
        job_id = r.json()["job_id"]
        job = wait_for(lambda: (j := _job(server, job_id))["counts"]["done"] >= 80 and j, 300, 0.05,
                       "the job to get going")
        assert job["state"] == "running" and job["counts"]["done"] < faces, job
        server = _crash_group_and_restart(server, env, tmp_path)
        restarted = time.monotonic()
        done = wait_for(lambda: (j := _job(server, job_id))["state"] in FINISHED and j, 60, 0.2,
                        "the interrupted job to finish within 60 s of the restart")
        print(f"300 x 4: killed at {job['counts']['done']} faces done; succeeded {time.monotonic() - restarted:.1f} s "
              "after the restart")
    finally:
        server.stop()
    assert done["state"] == "succeeded", done
    assert (done["counts"]["total"], done["counts"]["done"], done["counts"]["failed"]) == (faces, faces, 0), done
    output_dir = tmp_path / "jobs" / job_id
    assert not [p.name for p in output_dir.rglob("*") if ".tmp" in p.name]
    rows = check_job_outputs(output_dir, sources, variants, seed=9)
    assert len(rows) == faces * variants == 1200
