"""Bad input over real HTTP: every refusal is a 4xx with a JSON `{"error", "message"}` body.

The server here has API keys on, low upload / archive limits, and an external broker (the test Redis) with no
worker: jobs are accepted or refused, never run.
"""
from __future__ import annotations

import io
import os
import stat
import tarfile
import zipfile

import numpy as np
import pytest

from lrface.service.api import create_app
from lrface.service.settings import Settings
from service_helpers import HR_FACES, bomb_png, make_faces, png_bytes

pytestmark = [pytest.mark.redis, pytest.mark.process]

KEY = "test-key-0123456789"
MAX_UPLOAD = 64 * 1024


SERVER_ENV = dict(
    LRFACE_API_KEYS=f"other-key,{KEY}", LRFACE_MAX_UPLOAD_BYTES=MAX_UPLOAD, LRFACE_MAX_EMBED_IMAGES=3,
    LRFACE_MAX_ARCHIVE_BYTES=2 * 1024 * 1024, LRFACE_MAX_ARCHIVE_MEMBERS=10,
    LRFACE_MAX_ARCHIVE_TOTAL_BYTES=8 * 1024 * 1024, LRFACE_MAX_ARCHIVE_RATIO=50,
)


def prepare_server(tmp):
    data = tmp / "data"
    make_faces(data / "faces", 2)
    outside = tmp / "outside"
    make_faces(outside, 1)
    os.symlink(outside, data / "escape")
    os.symlink(outside / "group0" / "face_00.png", data / "faces" / "group0" / "linked.png")


@pytest.fixture(scope="module")
def http(server):
    with server.client(headers={"Authorization": f"Bearer {KEY}"}) as client:
        yield client


def _error(response, status: int, code: str | None = None) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert isinstance(body.get("error"), str) and isinstance(body.get("message"), str), body
    if code is not None:
        assert body["error"] == code, body
    return body


def _face() -> tuple[str, bytes, str]:
    return HR_FACES[0].name, HR_FACES[0].read_bytes(), "image/jpeg"


# -- authentication --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {KEY}"},
                                     {"Authorization": "Bearer"}], ids=["missing", "wrong", "not-bearer", "empty"])
def test_requests_without_a_valid_api_key_are_refused(server, headers):
    with server.client(headers=headers) as anon:
        r = anon.post("/v1/synthesize", files={"image": _face()}, data={"variants": "1"})
        _error(r, 401, "unauthorized")
        assert r.headers["www-authenticate"] == "Bearer"
        _error(anon.get("/v1/jobs/" + "0" * 32), 401, "unauthorized")
        _error(anon.get("/metrics"), 401, "unauthorized")
        # Liveness and readiness stay open for orchestrators.
        assert anon.get("/healthz").status_code == 200
        assert anon.get("/readyz").status_code == 200


def test_every_configured_key_is_accepted(server):
    with server.client(headers={"Authorization": "Bearer other-key"}) as c:
        assert c.post("/v1/synthesize", files={"image": _face()}, data={"variants": "1"}).status_code == 200


# -- images ----------------------------------------------------------------------------------------------------

def test_corrupt_image(http):
    data = HR_FACES[0].read_bytes()
    truncated = data[: len(data) // 3]
    _error(http.post("/v1/synthesize", files={"image": ("broken.jpg", truncated, "image/jpeg")}), 422, "corrupt")


def test_non_image_upload(http):
    body = _error(http.post("/v1/embed", files=[("images", ("notes.txt", b"hello, not an image\n" * 20, "text/plain"))]),
                  415, "not_an_image")
    assert body["filename"] == "notes.txt"


def test_decompression_bomb_is_refused_from_its_header(http):
    bomb = bomb_png(30000, 30000)
    assert len(bomb) < 1000
    _error(http.post("/v1/synthesize", files={"image": ("bomb.png", bomb, "image/png")}), 413, "too_large")


def test_oversized_upload_is_refused(http):
    noise = np.random.default_rng(0).integers(0, 256, (200, 200, 3), dtype=np.uint8)  # ~120 KB as PNG
    big = png_bytes(noise)
    assert MAX_UPLOAD < len(big)
    _error(http.post("/v1/synthesize", files={"image": ("big.png", big, "image/png")}), 413, "payload_too_large")
    huge = png_bytes(np.random.default_rng(1).integers(0, 256, (400, 400, 3), dtype=np.uint8))  # body over the limit
    _error(http.post("/v1/synthesize", files={"image": ("huge.png", huge, "image/png")}), 413, "payload_too_large")


def test_too_many_images_for_embed(http):
    _error(http.post("/v1/embed", files=[("images", _face()) for _ in range(4)]), 413, "too_many_images")


def test_tiny_image_is_refused(http):
    tiny = png_bytes(np.zeros((5, 5, 3), dtype=np.uint8))
    _error(http.post("/v1/embed", files=[("images", ("tiny.png", tiny, "image/png"))]), 422, "too_small")


def test_blank_image_has_no_face(http):
    blank = png_bytes(np.full((240, 240, 3), 180, dtype=np.uint8))
    _error(http.post("/v1/synthesize", files={"image": ("blank.png", blank, "image/png")}, data={"align": "auto"}),
           422, "no_face")
    _error(http.post("/v1/verify", files={"image_a": _face(), "image_b": ("blank.png", blank, "image/png")},
                     data={"align": "auto"}), 422, "no_face")


# -- parameters ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("form", [
    {"variants": "0"}, {"variants": "65"}, {"variants": "many"}, {"height": "4"}, {"height": "500"},
    {"height": "24", "min_height": "20"}, {"min_height": "40", "max_height": "30"}, {"align": "sideways"},
    {"format": "gif"}, {"seed": "-1"},
])
def test_invalid_synthesis_parameters(http, form):
    _error(http.post("/v1/synthesize", files={"image": _face()}, data=form), 422, "validation_error")


def test_missing_file_field(http):
    body = _error(http.post("/v1/synthesize", data={"variants": "2"}), 422, "validation_error")
    assert "image" in body["message"]


# -- jobs ------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("input_dir, status, code", [
    ("../", 400, "invalid_path"),
    ("faces/../..", 400, "invalid_path"),
    ("/etc", 400, "invalid_path"),
    ("escape", 403, "forbidden_path"),
    ("nowhere", 400, "input_not_found"),
])
def test_job_paths_outside_the_data_root_are_refused(http, input_dir, status, code):
    _error(http.post("/v1/jobs", json={"input_dir": input_dir, "variants": 2}), status, code)


@pytest.mark.parametrize("body", [{"input_dir": "faces", "variants": 0}, {"input_dir": "faces", "variants": 65},
                                  {"variants": 2}, {"input_dir": "faces", "colour": "red"}])
def test_invalid_job_parameters(http, body):
    _error(http.post("/v1/jobs", json=body), 422, "validation_error")


def test_job_body_must_be_json_or_multipart(http):
    _error(http.post("/v1/jobs", content=b"input_dir=faces", headers={"content-type": "text/plain"}), 415)
    _error(http.post("/v1/jobs", content=b"{not json", headers={"content-type": "application/json"}), 422, "validation_error")


def test_a_linked_file_outside_the_root_is_a_failure_and_the_job_can_be_cancelled(http):
    r = http.post("/v1/jobs", json={"input_dir": "faces", "variants": 2})
    assert r.status_code == 202, r.text
    job = r.json()
    assert job["counts"] == {"total": 3, "done": 0, "failed": 1}
    assert [(e["source"], e["reason"]) for e in job["errors"]] == [("group0/linked.png", "outside_root")]
    cancelled = http.delete(f"/v1/jobs/{job['job_id']}")
    assert cancelled.status_code == 200 and cancelled.json()["state"] == "cancelled"


def _zip_upload(members: dict[str, bytes], symlinks: dict[str, str] | None = None) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
        for name, target in (symlinks or {}).items():
            info = zipfile.ZipInfo(name)
            info.create_system = 3
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            zf.writestr(info, target)
    return buf.getvalue()


def _tar_upload(name: str, kind=tarfile.SYMTYPE, linkname: str = "/etc/passwd") -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        info = tarfile.TarInfo(name)
        info.type = kind
        info.linkname = linkname
        tf.addfile(info)
    return buf.getvalue()


FACE_BYTES = HR_FACES[0].read_bytes()


@pytest.mark.parametrize("filename, payload, status, code", [
    ("slip.zip", _zip_upload({"ok.jpg": FACE_BYTES, "../../evil.jpg": FACE_BYTES}), 400, "unsafe_archive"),
    ("abs.zip", _zip_upload({"/tmp/evil.jpg": FACE_BYTES}), 400, "unsafe_archive"),
    ("link.zip", _zip_upload({"ok.jpg": FACE_BYTES}, symlinks={"link.jpg": "/etc/passwd"}), 400, "unsafe_archive"),
    ("link.tar.gz", _tar_upload("link.jpg"), 400, "unsafe_archive"),
    ("slip.tar.gz", _tar_upload("../evil.jpg", tarfile.REGTYPE, ""), 400, "unsafe_archive"),
    ("dev.tar.gz", _tar_upload("dev", tarfile.CHRTYPE, ""), 400, "unsafe_archive"),
    ("bomb.zip", _zip_upload({"zeros.jpg": b"\0" * (4 * 1024 * 1024)}), 413, "archive_too_large"),
    ("many.zip", _zip_upload({f"{i}.jpg": FACE_BYTES for i in range(11)}), 413, "archive_too_large"),
    ("notes.zip", b"this is not an archive at all", 415, "unsupported_archive"),
    ("empty.zip", _zip_upload({"readme.txt": b"no images here"}), 422, "no_images"),
])
def test_unsafe_archives_are_refused(http, server, filename, payload, status, code):
    _error(http.post("/v1/jobs", files={"archive": (filename, payload, "application/octet-stream")},
                     data={"variants": "2"}), status, code)
    assert not (server.tmp / "evil.jpg").exists() and not list((server.tmp / "jobs" / "_uploads").glob("*/*"))


def test_archive_over_the_upload_limit_is_refused(http):
    payload = os.urandom(3 * 1024 * 1024)
    _error(http.post("/v1/jobs", files={"archive": ("big.zip", payload, "application/zip")}, data={"variants": "2"}),
           413, "payload_too_large")


@pytest.mark.parametrize("job_id", ["0" * 32, "not-a-job", "../../etc"])
def test_unknown_job_ids(http, job_id):
    _error(http.get(f"/v1/jobs/{job_id}"), 404)
    _error(http.get(f"/v1/jobs/{job_id}/manifest"), 404)
    _error(http.delete(f"/v1/jobs/{job_id}"), 404)


def test_unknown_job_is_job_not_found(http):
    _error(http.get("/v1/jobs/" + "a" * 32), 404, "job_not_found")


# -- HTTP-level errors -----------------------------------------------------------------------------------------

def test_unknown_route_and_wrong_method_are_json(http):
    _error(http.get("/v1/nothing-here"), 404, "not_found")
    _error(http.get("/v1/synthesize"), 405, "method_not_allowed")


def test_unexpected_errors_are_json_500s(tmp_path):
    from fastapi.testclient import TestClient

    app = create_app(Settings(load_models_on_startup=False, state_dir=tmp_path))

    @app.get("/boom")
    def boom():
        raise RuntimeError("secret detail")

    with TestClient(app, raise_server_exceptions=False) as client:
        r = client.get("/boom")
    assert r.status_code == 500
    assert r.json() == {"error": "internal_error", "message": "internal server error"}


def test_missing_models_and_broker_make_the_service_unready_not_broken(tmp_path):
    from fastapi.testclient import TestClient

    settings = Settings(mrgan_model_path=tmp_path / "missing.onnx", embedder_model_path=tmp_path / "missing-too.onnx",
                        broker_url=None, redis_url=None, state_dir=tmp_path)
    with TestClient(create_app(settings)) as client:
        assert client.get("/healthz").status_code == 200
        ready = _error(client.get("/readyz"), 503, "not_ready")
        assert not ready["checks"]["synthesizer"]["ok"] and "missing.onnx" in ready["checks"]["synthesizer"]["detail"]
        assert not ready["checks"]["broker"]["ok"]
        _error(client.post("/v1/synthesize", files={"image": _face()}), 503, "model_unavailable")
        _error(client.post("/v1/verify", files={"image_a": _face(), "image_b": _face()}), 503, "model_unavailable")
        _error(client.get("/v1/jobs/" + "0" * 32), 503, "jobs_unavailable")
