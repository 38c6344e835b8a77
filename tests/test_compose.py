"""docker-compose.yml, run without Docker: its api and worker commands as local processes with the environment it
declares (redis host -> 127.0.0.1, volumes and tmpfs -> temp folders), then the four user flows over real HTTP:
synthesize, embed + verify, a bulk job over a folder, health / readiness."""
from __future__ import annotations

import base64
import re
import sys
from pathlib import Path

import pytest
import yaml

from service_helpers import (
    HR_FACES,
    REPO,
    Process,
    Server,
    check_job_outputs,
    forget_namespace,
    free_port,
    make_faces,
    redis_or_skip,
    unique_namespace,
    wait_for,
)

pytestmark = [pytest.mark.redis]

COMPOSE = REPO / "docker-compose.yml"
_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::?-([^}]*))?\}")


def _interpolate(value: str) -> str:
    # Compose's ${VAR:-default}, with an empty environment: the defaults the file declares.
    return _VAR.sub(lambda m: m.group(2) or "", value)


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def test_compose_declares_a_scalable_stack(compose):
    services = compose["services"]
    assert set(services) == {"redis", "api", "worker"}
    redis = services["redis"]
    assert "--appendonly" in redis["command"] and any(v.endswith(":/data") for v in redis["volumes"])
    api, worker = services["api"], services["worker"]
    assert api["command"][:2] == ["lrface", "serve"] and worker["command"][:2] == ["lrface", "worker"]
    assert any(p.split(":")[-1] == "8000" for p in api["ports"]) and "healthcheck" in api
    # published on the loopback unless LRFACE_API_BIND says otherwise; healthy = ready (models, broker)
    assert all(_interpolate(p).startswith("127.0.0.1:") for p in api["ports"]), api["ports"]
    assert "/readyz" in " ".join(api["healthcheck"]["test"])
    assert "container_name" not in worker and "ports" not in worker  # `--scale worker=N` must work
    for svc in (api, worker):
        assert svc["environment"]["LRFACE_BROKER_URL"] == "redis://redis:6379/0"
        mounts = {v.split(":")[1]: v.split(":")[0] for v in svc["volumes"]}
        assert mounts.get(svc["environment"]["LRFACE_DATA_ROOT"]) == "data"
        assert mounts.get(svc["environment"]["LRFACE_JOBS_ROOT"]) == "jobs"
        assert svc.get("read_only") is True and "/tmp" in svc["tmpfs"]
    assert set(compose["volumes"]) >= {"redis-data", "data", "jobs"}


def test_the_gpu_override_builds_the_cuda_image_with_gpus_reserved():
    gpu = yaml.safe_load((REPO / "docker-compose.gpu.yml").read_text())["services"]
    for name in ("api", "worker"):
        assert gpu[name]["build"]["dockerfile"] == "docker/Dockerfile.gpu" and gpu[name]["image"] == "lrface:gpu"
        devices = gpu[name]["deploy"]["resources"]["reservations"]["devices"]
        assert devices[0]["driver"] == "nvidia" and "gpu" in devices[0]["capabilities"]


def test_dockerfiles_are_non_root_with_a_healthcheck():
    cpu = (REPO / "docker" / "Dockerfile").read_text()
    gpu = (REPO / "docker" / "Dockerfile.gpu").read_text()
    assert re.search(r"^FROM python:3\.11-slim", cpu, re.M) and re.search(r"^FROM nvidia/cuda:\S+-runtime", gpu, re.M)
    assert "'.[gpu]'" in gpu and "pip install ." in cpu
    for text in (cpu, gpu):
        assert re.search(r"^USER (?!root)\w+", text, re.M)
        assert re.search(r"^HEALTHCHECK .*", text, re.M) and "/healthz" in text


def _local(svc: dict, name: str, tmp: Path, extra_env: dict[str, str]) -> tuple[list[str], dict[str, str]]:
    """A compose service's command and environment, mapped onto this machine."""
    mounts = {}
    for volume in svc.get("volumes", []):
        source, target = volume.split(":")[:2]
        mounts[target] = tmp / "volumes" / source
    for target in svc.get("tmpfs", []):
        mounts[target] = tmp / f"tmpfs-{name}"
    for folder in mounts.values():
        folder.mkdir(parents=True, exist_ok=True)
    env = {}
    for key, value in svc["environment"].items():
        value = _interpolate(str(value)).replace("redis://redis:", "redis://127.0.0.1:")
        for target, folder in sorted(mounts.items(), key=lambda kv: -len(kv[0])):
            if value == target or value.startswith(target + "/"):
                value = str(folder) + value[len(target):]
                break
        env[key] = value
    import os

    full_env = {k: v for k, v in os.environ.items() if not k.startswith("LRFACE_")}
    full_env.update(env)
    full_env.update(extra_env)
    cmd = list(svc["command"])
    assert cmd[0] == "lrface"
    return [sys.executable, "-m", "lrface.service.cli", *cmd[1:]], full_env


@pytest.fixture(scope="module")
def stack(compose, tmp_path_factory, mrgan_path, embedder_path):
    client = redis_or_skip(db=0)
    prefix, queue = unique_namespace()
    tmp = tmp_path_factory.mktemp("compose")
    # Not in the file: models from the test fixtures, one thread, and a private namespace on the shared Redis.
    extra = {"LRFACE_MRGAN_MODEL_PATH": str(mrgan_path), "LRFACE_EMBEDDER_MODEL_PATH": str(embedder_path),
             "LRFACE_THREADS": "1", "LRFACE_KEY_PREFIX": prefix, "LRFACE_QUEUE": queue, "LRFACE_CHUNK_SIZE": "2",
             "LRFACE_LOG_LEVEL": "warning", "OMP_NUM_THREADS": "1"}
    api_cmd, api_env = _local(compose["services"]["api"], "api", tmp, extra)
    port = free_port()
    api_cmd[api_cmd.index("--port") + 1] = str(port)
    api_cmd[api_cmd.index("--host") + 1] = "127.0.0.1"
    worker_cmd, worker_env = _local(compose["services"]["worker"], "worker", tmp, extra)
    worker = Process(worker_cmd, worker_env, tmp / "worker.log")
    try:
        api = Server(api_cmd, api_env, port, tmp / "api.log")
    except BaseException:
        worker.stop()
        raise
    api.tmp, api.data, api.worker = tmp, Path(api_env["LRFACE_DATA_ROOT"]), worker
    yield api
    api.stop()
    worker.stop()
    forget_namespace(client, prefix, queue)


@pytest.fixture(scope="module")
def http(stack):
    with stack.client() as client:
        yield client


def _face(i: int):
    return HR_FACES[i].name, HR_FACES[i].read_bytes(), "image/jpeg"


def test_flow_health_and_readiness(http, stack):
    assert http.get("/healthz").json() == {"status": "ok"}
    ready = http.get("/readyz")
    assert ready.status_code == 200, ready.text
    assert ready.json()["checks"]["broker"]["ok"]
    assert stack.worker.alive(), stack.worker.log_tail()


def test_flow_synthesize(http):
    r = http.post("/v1/synthesize", files={"image": _face(0)}, data={"variants": "3", "seed": "4"})
    assert r.status_code == 200, r.text
    variants = r.json()["variants"]
    assert len(variants) == 3 and all(base64.b64decode(v["image_base64"])[:4] == b"\x89PNG" for v in variants)


def test_flow_embed_and_verify(http):
    r = http.post("/v1/embed", files=[("images", _face(0)), ("images", _face(2))])
    assert r.status_code == 200, r.text
    assert len(r.json()["embeddings"]) == 2
    v = http.post("/v1/verify", files={"image_a": _face(0), "image_b": _face(0)})
    assert v.status_code == 200 and v.json()["same_person"] is True


def test_flow_bulk_job_over_a_folder(http, stack):
    sources = make_faces(stack.data / "batch", 5)
    r = http.post("/v1/jobs", json={"input_dir": "batch", "variants": 2, "seed": 21})
    assert r.status_code == 202, r.text
    job_id = r.json()["job_id"]
    job = wait_for(lambda: (j := http.get(f"/v1/jobs/{job_id}").json())["state"] in ("succeeded", "failed") and j,
                   120, 0.2, "the job on the compose worker")
    assert job["state"] == "succeeded", (job, stack.worker.log_tail())
    assert job["counts"] == {"total": 5, "done": 5, "failed": 0}
    output_dir = Path(job["output_dir"])
    assert output_dir.parent == stack.tmp / "volumes" / "jobs"  # on the shared jobs volume
    rows = check_job_outputs(output_dir, sources, variants=2, seed=21)
    assert http.get(f"/v1/jobs/{job_id}/manifest").text.count("\n") == len(rows) == 10
