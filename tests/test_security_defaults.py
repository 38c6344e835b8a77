"""Security defaults: constant-time API key checks, no secrets in logs, CORS off unless configured, structured JSON
logs with a request id on every line, containers that run as non-root on a read-only root filesystem."""
from __future__ import annotations

import hmac
import json
import re
from pathlib import Path

import pytest
import yaml

from lrface.service.api import create_app
from lrface.service.api import guard
from lrface.service.settings import Settings
from service_helpers import (
    HR_FACES,
    REPO,
    TEST_REDIS_URL,
    child_pids,
    forget_namespace,
    redis_or_skip,
    serve,
    service_env,
    unique_namespace,
)

pytestmark = [pytest.mark.redis, pytest.mark.process]

SECRET_KEY = "sk-live-7f3a9c1e5b2d4f6a8c0e1b3d5f7a9c1e"
OTHER_KEY = "sk-live-0000aaaa1111bbbb2222cccc3333dddd"
FACE = (HR_FACES[0].name, HR_FACES[0].read_bytes(), "image/jpeg")


# -- API keys --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("token", [SECRET_KEY, OTHER_KEY, "wrong", "", SECRET_KEY[:-1], SECRET_KEY + "x"],
                         ids=["first-key", "second-key", "wrong", "empty", "prefix", "longer"])
def test_api_keys_are_compared_in_constant_time_against_every_key(monkeypatch, token):
    calls = []
    real_compare = hmac.compare_digest

    def counting(a, b):
        calls.append((type(a), type(b)))
        return real_compare(a, b)

    monkeypatch.setattr(guard.hmac, "compare_digest", counting)
    settings = Settings(api_keys=[SECRET_KEY, OTHER_KEY])
    ok = guard.api_key_ok(settings, f"Bearer {token}")
    assert ok == (token in (SECRET_KEY, OTHER_KEY))
    if token:  # (an empty token is refused before any comparison)
        # Every configured key is compared (no early exit on a match), each with hmac.compare_digest on bytes.
        assert calls == [(bytes, bytes), (bytes, bytes)]


def test_no_keys_means_no_authentication_and_a_key_is_needed_once_configured():
    assert guard.api_key_ok(Settings(), None)
    assert not guard.api_key_ok(Settings(api_keys=[SECRET_KEY]), None)
    assert not guard.api_key_ok(Settings(api_keys=[SECRET_KEY]), f"Basic {SECRET_KEY}")


# -- CORS ------------------------------------------------------------------------------------------------------

def test_cors_is_off_by_default(tmp_path):
    from fastapi.testclient import TestClient

    with TestClient(create_app(Settings(load_models_on_startup=False, state_dir=tmp_path))) as client:
        preflight = client.options("/v1/embed", headers={"Origin": "https://evil.example",
                                                         "Access-Control-Request-Method": "POST"})
        assert "access-control-allow-origin" not in preflight.headers
        assert preflight.status_code in (404, 405)
        simple = client.get("/healthz", headers={"Origin": "https://evil.example"})
        assert simple.status_code == 200 and "access-control-allow-origin" not in simple.headers


def test_cors_allows_only_the_configured_origins(tmp_path):
    from fastapi.testclient import TestClient

    settings = Settings(load_models_on_startup=False, state_dir=tmp_path, cors_origins=["https://app.example"])
    with TestClient(create_app(settings)) as client:
        ok = client.options("/v1/embed", headers={"Origin": "https://app.example", "Access-Control-Request-Method": "POST"})
        assert ok.headers.get("access-control-allow-origin") == "https://app.example"
        other = client.options("/v1/embed", headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"})
        assert "access-control-allow-origin" not in other.headers
        assert "access-control-allow-credentials" not in ok.headers


# -- logs ------------------------------------------------------------------------------------------------------



def _embedded_redis_password(serve_pid: int) -> str | None:
    # The worker child gets the embedded broker's URL, password included, in its environment. (redis-server
    # itself rewrites its command line, so the password cannot be read from there.)
    for pid in child_pids(serve_pid):
        try:
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        for entry in environ:
            match = re.fullmatch(rb"LRFACE_BROKER_URL=redis://:([^@]+)@.*", entry)
            if match:
                return match.group(1).decode()
    return None


def test_secrets_never_reach_the_logs(tmp_path, mrgan_path, embedder_path):
    """`lrface serve` in its embedded mode (own redis-server with a random password, own worker) at debug level,
    with API keys on: neither the keys (right or wrong ones sent) nor the broker password appear in its output."""
    env = service_env(tmp_path, mrgan_path, embedder_path, LRFACE_API_KEYS=f"{SECRET_KEY},{OTHER_KEY}",
                      LRFACE_LOG_LEVEL="debug")
    server = serve(env, tmp_path)
    try:
        password = _embedded_redis_password(server.proc.pid)
        assert password, "the embedded redis-server was not found"
        guesses = ["sk-live-ffffffffffffffffffffffffffffffff", SECRET_KEY[:-1]]
        with server.client(headers={"Authorization": f"Bearer {SECRET_KEY}"}) as c:
            assert c.post("/v1/embed", files=[("images", FACE)]).status_code == 200
            assert c.post("/v1/synthesize", files={"image": FACE}, data={"variants": "0"}).status_code == 422
            assert c.get(f"/v1/jobs/{'0' * 32}", params={"api_key": SECRET_KEY}).status_code == 404
            assert c.get("/metrics").status_code == 200
        for guess in guesses:
            with server.client(headers={"Authorization": f"Bearer {guess}"}) as c:
                assert c.post("/v1/embed", files=[("images", FACE)]).status_code == 401
        with server.client(headers={"Authorization": f"Bearer {OTHER_KEY}", "X-Api-Key": SECRET_KEY}) as c:
            assert c.post("/v1/jobs", json={"input_dir": "nowhere"}).status_code == 400
    finally:
        server.stop()
    log = server.log_path.read_text(errors="replace")
    assert "lrface.access" in log, "the server logged no requests at all"
    for secret in (SECRET_KEY, OTHER_KEY, password, *guesses):
        assert secret not in log, f"a secret appears in the log: {secret[:6]}..."
    assert "Bearer" not in log and "authorization" not in log.lower()


@pytest.fixture
def api_server(tmp_path, mrgan_path, embedder_path):
    """The API alone (external broker, no worker child): everything in its output is the API process's."""
    client = redis_or_skip()
    prefix, queue = unique_namespace()
    env = service_env(tmp_path, mrgan_path, embedder_path, LRFACE_BROKER_URL=TEST_REDIS_URL, LRFACE_KEY_PREFIX=prefix,
                      LRFACE_QUEUE=queue, LRFACE_LOG_LEVEL="info")
    server = serve(env, tmp_path)
    yield server
    server.stop()
    forget_namespace(client, prefix, queue)


def test_logs_are_json_lines_each_with_a_request_id(api_server):
    with api_server.client() as c:
        r = c.post("/v1/embed", files=[("images", FACE)], headers={"X-Request-ID": "client-req-42"})
        assert r.status_code == 200 and r.headers["x-request-id"] == "client-req-42"
        made_up = c.post("/v1/synthesize", files={"image": FACE}, data={"variants": "0"})
        assert made_up.status_code == 422 and re.fullmatch(r"[0-9a-f]{32}", made_up.headers["x-request-id"])
        # An id that could forge log lines or headers is replaced, never echoed.
        hostile = c.get("/v1/jobs/" + "0" * 32, headers={"X-Request-ID": "x" * 300})
        assert hostile.status_code == 404 and re.fullmatch(r"[0-9a-f]{32}", hostile.headers["x-request-id"])
        spaced = c.get("/healthz", headers={"X-Request-ID": "a b\"}{"})
        assert re.fullmatch(r"[0-9a-f]{32}", spaced.headers["x-request-id"])
        c.get("/v1/nothing")
    api_server.stop()
    lines = [line for line in api_server.log_path.read_text().splitlines() if line.strip()]
    assert lines
    records = []
    for line in lines:
        record = json.loads(line)  # every line is one JSON object ...
        assert {"ts", "level", "logger", "message", "request_id"} <= set(record), record  # ... with a request_id
        records.append(record)
    access = [r for r in records if r["logger"] == "lrface.access"]
    ours = [r for r in access if r["request_id"] == "client-req-42"]
    assert len(ours) == 1 and ours[0]["path"] == "/v1/embed" and ours[0]["status"] == 200 and ours[0]["duration_ms"] > 0
    assert {r["request_id"] for r in access if r["status"] == 422} == {made_up.headers["x-request-id"]}
    assert not any("x" * 300 in line for line in lines)
    assert any(r["logger"].startswith("uvicorn") for r in records), "uvicorn's own lines should be JSON too"


# -- containers ------------------------------------------------------------------------------------------------

def test_containers_run_as_non_root_on_a_read_only_root_filesystem():
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    for name, service in compose["services"].items():
        assert service.get("read_only") is True, f"{name}: read_only"
        assert "/tmp" in service.get("tmpfs", []), f"{name}: a tmpfs on /tmp"
        assert "no-new-privileges:true" in service.get("security_opt", []), f"{name}: no-new-privileges"
    for name in ("api", "worker"):
        assert compose["services"][name].get("cap_drop") == ["ALL"], f"{name}: cap_drop ALL"
    for dockerfile in ("Dockerfile", "Dockerfile.gpu"):
        text = (REPO / "docker" / dockerfile).read_text()
        users = re.findall(r"^USER\s+(\S+)", text, re.M)
        assert users and users[-1] not in ("root", "0"), f"{dockerfile} must end as a non-root user"
