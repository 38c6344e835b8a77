"""Crash recovery of `lrface serve` with its embedded broker: a job interrupted by a crash finishes after a restart.

The visibility timeout (1 h) and the stall sweeper (300 s) keep their defaults here, so a job that finishes soon
after the restart shows that `lrface serve` handed out again, at once, the chunk its dead worker held
(lrface.service.server.recover_embedded_jobs): with the whole process group SIGKILLed, with only the main process
SIGKILLed (its children follow it), with only the embedded worker SIGKILLed (its supervisor restarts it), and
with the process group SIGTERMed (a clean stop, the job goes on after the restart).
Each time: exactly one output per (image, variant), a manifest that matches the disk, no temp file.
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
