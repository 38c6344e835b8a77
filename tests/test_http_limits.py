"""Limits before authentication and on archive uploads (issue #15, item 6), against a real `lrface serve`.

- request heads: more than LRFACE_MAX_HEADER_BYTES of request line + headers is a 431 and a closed connection,
  8 connections pushing 20 MB of headers each cost the server almost no memory and /healthz stays quick;
- a head that takes longer than LRFACE_HEADER_TIMEOUT (trickled, or a connection that sends nothing) is closed
  with a 408;
- an archive upload that takes longer than LRFACE_UPLOAD_TIMEOUT in all (never pausing long enough for the idle
  timeout) is a 408; more than LRFACE_MAX_CONCURRENT_UPLOADS uploads at once: 503 `overloaded` + Retry-After,
  and the place is free again once the upload in progress is done.
"""
from __future__ import annotations

import io
import socket
import threading
import time
import zipfile

import pytest

from service_helpers import HR_FACES, served_on_test_redis
from test_faults import HalfSentRequest, _multipart

MAX_HEADER_BYTES = 16 * 1024
HEADER_TIMEOUT = 2.0
UPLOAD_TIMEOUT = 4.0
RETRY_AFTER = 3


@pytest.fixture(scope="module")
def server(tmp_path_factory, mrgan_path, embedder_path):
    tmp = tmp_path_factory.mktemp("http-limits")
    with served_on_test_redis(tmp, mrgan_path, embedder_path, LRFACE_MAX_HEADER_BYTES=MAX_HEADER_BYTES,
                              LRFACE_HEADER_TIMEOUT=HEADER_TIMEOUT, LRFACE_UPLOAD_TIMEOUT=UPLOAD_TIMEOUT,
                              LRFACE_MAX_CONCURRENT_UPLOADS=1, LRFACE_BODY_IDLE_TIMEOUT=30,
                              LRFACE_RETRY_AFTER_S=RETRY_AFTER) as srv:
        yield srv


def _connect(server) -> socket.socket:
    host, port = server.base_url.removeprefix("http://").split(":")
    return socket.create_connection((host, int(port)), timeout=30)


def _read_all(sock: socket.socket) -> bytes:
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except OSError:
        pass
    return data


def _rss_kb(pid: int) -> int:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def test_headers_of_sane_size_are_served(server):
    with server.client() as http:
        r = http.get("/healthz", headers={f"X-Pad-{i}": "a" * 100 for i in range(60)})  # ~7 KB of headers
        assert r.status_code == 200


def test_oversized_headers_are_refused_with_431_and_cost_no_memory(server):
    with _connect(server) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * (4 * MAX_HEADER_BYTES))
        answer = _read_all(sock)
    assert answer.startswith(b"HTTP/1.1 431"), answer[:200]
    assert b'"headers_too_large"' in answer

    pid = server.proc.pid
    before = _rss_kb(pid)
    sent = [0] * 8

    def push(i: int) -> None:
        with _connect(server) as sock:
            try:
                sock.sendall(b"POST /v1/embed HTTP/1.1\r\nHost: x\r\n")
                block = b"X-Fill: " + b"b" * 65536 + b"\r\n"
                while sent[i] < 20 * 1024 * 1024:
                    sock.sendall(block)
                    sent[i] += len(block)
            except OSError:
                return  # the server closed the connection: what is expected

    threads = [threading.Thread(target=push, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    start = time.monotonic()
    with server.client() as http:
        assert http.get("/healthz").status_code == 200
    healthz_s = time.monotonic() - start
    for t in threads:
        t.join(60)
    grown_mb = (_rss_kb(pid) - before) / 1024
    print(f"8 x 20 MB of headers: the server grew by {grown_mb:.1f} MB, /healthz took {healthz_s:.2f} s, "
          f"the most one connection could send: {max(sent)} bytes")
    assert max(sent) < 8 * 1024 * 1024, f"a connection could send {max(sent)} bytes of headers"
    assert grown_mb < 50, f"the server grew by {grown_mb:.0f} MB"
    assert healthz_s < 5, f"/healthz took {healthz_s:.1f} s"


def test_a_trickled_head_or_a_silent_connection_is_closed_with_408(server):
    with _connect(server) as silent, _connect(server) as trickle:
        start = time.monotonic()
        trickle.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")

        def drip():
            try:
                for _ in range(int(4 * HEADER_TIMEOUT / 0.3)):
                    trickle.sendall(b"X: y\r\n")
                    time.sleep(0.3)
            except OSError:
                pass

        dripper = threading.Thread(target=drip)
        dripper.start()
        answer_silent = _read_all(silent)
        answer_trickle = _read_all(trickle)
        elapsed = time.monotonic() - start
        dripper.join()
    assert answer_silent.startswith(b"HTTP/1.1 408"), answer_silent[:200]
    assert answer_trickle.startswith(b"HTTP/1.1 408"), answer_trickle[:200]
    assert HEADER_TIMEOUT - 0.5 < elapsed < HEADER_TIMEOUT + 15, elapsed
    with server.client() as http:  # a keep-alive client that sends requests promptly is unaffected
        for _ in range(3):
            assert http.get("/healthz").status_code == 200
            time.sleep(HEADER_TIMEOUT / 2)


def _archive_body() -> tuple[bytes, str]:
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("a.jpg", HR_FACES[0].read_bytes())
    return _multipart({"variants": "1"}, {"archive": ("a.zip", archive.getvalue(), "application/zip")})


def test_an_upload_slower_than_the_total_limit_gets_408(server):
    body, content_type = _archive_body()
    with _connect(server) as sock:
        start = time.monotonic()
        sock.sendall((f"POST /v1/jobs HTTP/1.1\r\nHost: x\r\nContent-Type: {content_type}\r\n"
                      f"Content-Length: {len(body)}\r\n\r\n").encode())
        answer = b""
        try:
            for i in range(len(body)):  # a byte every 0.2 s: never idle for long, but far too slow in all
                sock.sendall(body[i:i + 1])
                time.sleep(0.2)
                if time.monotonic() - start > UPLOAD_TIMEOUT + 30:
                    break
                sock.setblocking(False)
                try:
                    answer += sock.recv(65536)
                except BlockingIOError:
                    pass
                finally:
                    sock.setblocking(True)
                if answer:
                    break
        except OSError:
            pass
        answer += _read_all(sock)
        elapsed = time.monotonic() - start
    assert answer.startswith(b"HTTP/1.1 408"), answer[:300]
    assert b"LRFACE_UPLOAD_TIMEOUT" in answer
    assert UPLOAD_TIMEOUT - 0.5 < elapsed < UPLOAD_TIMEOUT + 20, elapsed


def test_concurrent_uploads_are_capped(server):
    body, content_type = _archive_body()
    held = HalfSentRequest(server.base_url, "/v1/jobs", body, content_type)  # takes the only place
    try:
        time.sleep(0.5)
        with server.client() as http:
            refused = http.post("/v1/jobs", files={"archive": ("a.zip", b"PK" + b"x" * 1000, "application/zip")},
                                data={"variants": "1"})
            assert refused.status_code == 503 and refused.json()["error"] == "overloaded", refused.text
            assert refused.headers["retry-after"] == str(RETRY_AFTER)
            assert "LRFACE_MAX_CONCURRENT_UPLOADS" in refused.json()["message"]
            # JSON jobs are not uploads: not gated
            assert http.post("/v1/jobs", json={"input_dir": "nowhere"}).status_code == 400
        status, answer = held.finish()
        assert status == 202, answer
        with server.client() as http:
            again = http.post("/v1/jobs", files={"archive": ("a.zip", body_archive(), "application/zip")},
                              data={"variants": "1"})
            assert again.status_code == 202, again.text
    finally:
        held.sock.close()


def body_archive() -> bytes:
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("a.jpg", HR_FACES[0].read_bytes())
    return archive.getvalue()
