"""Refusals that clients actually receive (issue #15, item 5), over real HTTP with real concurrent clients.

A 503 / 429 / 413 sent before the request body was read used to go out with `Connection: close`; the server closed
the socket with the body unread, the kernel reset the connection, and a client still sending got the reset
instead of the answer (35 of 40 clients in the first test below, before the fix). Now the unread body is drained
(bounded) first. The clients here are strict, as curl is: a failed write means no answer. Each test sends bodies
of several megabytes (larger than the socket buffers) from many clients at once and checks that every client
gets a complete answer: 200 or the refusal with its JSON and `Retry-After`.
"""
from __future__ import annotations

import concurrent.futures
import io
import json
import os
import socket
import struct
import zipfile
import zlib

import httpx
import numpy as np
import pytest
from PIL import Image

from service_helpers import HR_FACES, served_on_test_redis, make_faces

RETRY_AFTER = 3
JOBS_RETRY_AFTER = 7
PAD = 8_000_000  # bytes of padding per upload: well beyond what the socket buffers hold


class NoAnswer(Exception):
    pass


def strict_post(base_url: str, path: str, fields: dict, files: dict) -> tuple[int, dict, dict]:
    """POST a multipart body over a plain socket; (status, lower-cased headers, JSON body). A write that fails or a
    connection that ends without a whole answer raises NoAnswer."""
    boundary = os.urandom(8).hex()
    parts = [f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode()
             for k, v in fields.items()]
    for name, (filename, data, media) in files.items():
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; filename="{filename}"\r\n'
                     f'Content-Type: {media}\r\n\r\n'.encode() + data + b"\r\n")
    body = b"".join(parts) + f"--{boundary}--\r\n".encode()
    host, port = base_url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=120) as sock:
        head = (f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: multipart/form-data; boundary={boundary}"
                f"\r\nContent-Length: {len(body)}\r\n\r\n").encode()
        try:
            sock.sendall(head + body)
            data = b""
            while b"\r\n\r\n" not in data:
                chunk = sock.recv(65536)
                if not chunk:
                    raise NoAnswer(f"the connection ended after {len(data)} bytes of the answer")
                data += chunk
            raw_head, _, rest = data.partition(b"\r\n\r\n")
            lines = raw_head.decode("latin-1").split("\r\n")
            headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
            length = int(headers["content-length"])
            while len(rest) < length:
                chunk = sock.recv(65536)
                if not chunk:
                    raise NoAnswer("the connection ended in the middle of the answer")
                rest += chunk
        except OSError as exc:
            raise NoAnswer(repr(exc)) from None
    return int(lines[0].split()[1]), headers, json.loads(rest[:length])


def padded_png(pad: int) -> bytes:
    """A real face as PNG with `pad` random bytes in a private ancillary chunk (decoders skip it)."""
    buf = io.BytesIO()
    Image.fromarray(np.asarray(Image.open(HR_FACES[0]).convert("RGB"))).save(buf, format="PNG")
    png = buf.getvalue()
    data = os.urandom(pad)
    chunk = struct.pack(">I", len(data)) + b"prVt" + data + struct.pack(">I", zlib.crc32(b"prVt" + data) & 0xFFFFFFFF)
    iend = png.rindex(b"IEND") - 4
    return png[:iend] + chunk + png[iend:]


@pytest.fixture(scope="module")
def server(tmp_path_factory, mrgan_path, embedder_path):
    tmp = tmp_path_factory.mktemp("refusals")
    make_faces(tmp / "data" / "faces", 2)
    with served_on_test_redis(tmp, mrgan_path, embedder_path,
                              LRFACE_INFERENCE_CONCURRENCY=1, LRFACE_INFERENCE_QUEUE_SIZE=1,
                              LRFACE_INFERENCE_QUEUE_TIMEOUT=60, LRFACE_MAX_ACTIVE_JOBS=1,
                              LRFACE_MAX_UPLOAD_BYTES=9_000_000, LRFACE_RETRY_AFTER_S=RETRY_AFTER,
                              LRFACE_JOBS_RETRY_AFTER_S=JOBS_RETRY_AFTER,
                              LRFACE_MAX_CONCURRENT_UPLOADS=16) as srv:  # (12 uploads at once below: 429s)
        yield srv


def _in_parallel(n: int, call) -> list:
    """call(i) in n threads at once; each result is the response or the transport error it raised."""
    def guarded(i):
        try:
            return call(i)
        except (NoAnswer, httpx.TransportError) as exc:
            return exc

    with concurrent.futures.ThreadPoolExecutor(n) as pool:
        return list(pool.map(guarded, range(n)))


def test_overload_503s_reach_every_client_with_retry_after(server):
    image = padded_png(PAD)

    def one(i):
        return strict_post(server.base_url, "/v1/embed", {"align": "none"}, {"images": ("f.png", image, "image/png")})

    answers = _in_parallel(40, one)
    errors = [repr(a) for a in answers if isinstance(a, Exception)]
    assert not errors, f"{len(errors)} of 40 clients got no answer: {errors[:3]}"
    statuses = [status for status, _, _ in answers]
    assert set(statuses) <= {200, 503}, statuses
    assert statuses.count(503) >= 10 and statuses.count(200) >= 1, statuses
    for status, headers, answer in answers:
        if status == 503:
            assert answer["error"] == "overloaded" and headers["retry-after"] == str(RETRY_AFTER)


def test_413s_for_announced_oversized_bodies_reach_every_client(server):
    body = os.urandom(10_000_000)  # over the 9 MB + form overhead limit of /v1/synthesize

    def one(i):
        return strict_post(server.base_url, "/v1/synthesize", {}, {"image": ("big.png", body, "image/png")})

    answers = _in_parallel(12, one)
    errors = [repr(a) for a in answers if isinstance(a, Exception)]
    assert not errors, f"{len(errors)} of 12 clients got no answer: {errors[:3]}"
    for status, _, answer in answers:
        assert status == 413 and answer["error"] == "payload_too_large", answer


def test_429s_for_archive_uploads_reach_every_client_with_retry_after(server):
    with server.client() as http:  # no worker runs here: this job stays queued and takes the only place
        first = http.post("/v1/jobs", json={"input_dir": "faces", "variants": 1})
        assert first.status_code == 202, first.text
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr("a.png", padded_png(PAD))
    data = archive.getvalue()

    def one(i):
        return strict_post(server.base_url, "/v1/jobs", {"variants": "1"}, {"archive": ("a.zip", data, "application/zip")})

    try:
        answers = _in_parallel(12, one)
        errors = [repr(a) for a in answers if isinstance(a, Exception)]
        assert not errors, f"{len(errors)} of 12 clients got no answer: {errors[:3]}"
        for status, headers, answer in answers:
            assert status == 429 and answer["error"] == "too_many_jobs", answer
            assert headers["retry-after"] == str(JOBS_RETRY_AFTER)
    finally:
        with server.client() as http:
            http.delete(f"/v1/jobs/{first.json()['job_id']}?purge=true")


def test_a_drained_refusal_keeps_the_connection_usable(server):
    with httpx.Client(base_url=server.base_url, timeout=60) as c:
        refused = c.post("/v1/synthesize", files={"image": ("big.png", os.urandom(10_000_000), "image/png")})
        assert refused.status_code == 413 and refused.headers.get("connection", "").lower() != "close"
        assert c.get("/healthz").status_code == 200
