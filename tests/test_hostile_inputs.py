"""Hostile input over real HTTP against `lrface serve`: each case is refused with a 4xx JSON error or handled
correctly (processed as it should be); none gives a 5xx or hangs (every request has a 30 s client timeout, and
the server's body timeouts are 2 s here).

The catalogue: 52 test ids in tests/test_api_errors.py (A) plus 91 new ones here (H), 143 in all, one test id
per case (a few ids of A check two or three variants of their case).

| area | case | expected | file |
|---|---|---|---|
| auth | no key / wrong key / not Bearer / empty Bearer (4) | 401 unauthorized | A |
| auth | every configured key accepted | 200 | A |
| image | truncated JPEG | 422 corrupt | A |
| image | text file as image | 415 not_an_image | A |
| image | PNG header claiming 30000x30000 (decompression bomb) | 413 too_large | A |
| image | upload over the per-file limit; body over the request limit | 413 payload_too_large | A |
| image | too many images for /v1/embed | 413 too_many_images | A |
| image | 5x5 image | 422 too_small | A |
| image | blank image with align=auto (synthesize, verify) | 422 no_face | A |
| params | variants 0 / 65 / "many", height 4 / 500, height+min_height, min>max, align, format, seed -1 (10) | 422 | A |
| params | missing file field | 422 | A |
| jobs | input_dir "../", "faces/../..", "/etc", link out of the root, missing (5) | 400 / 403 | A |
| jobs | variants 0 / 65, no input_dir, unknown field (4) | 422 | A |
| jobs | text/plain body; broken JSON | 415; 422 | A |
| jobs | file linked out of the root | listed as failure | A |
| archive | zip slip, absolute name, zip symlink, tar symlink, tar slip, tar char device (6) | 400 unsafe_archive | A |
| archive | zip bomb (ratio), too many members (2) | 413 archive_too_large | A |
| archive | not an archive; no images in it | 415; 422 | A |
| archive | archive over the upload limit | 413 | A |
| ids | unknown / malformed / traversal job ids (3) + unknown id code | 404 | A |
| http | unknown route, wrong method, unexpected exception, missing lrface/models/broker (4) | 404/405/500 JSON/503 | A |
| image | zero-byte file | 422 empty | H |
| image | PNG + appended zip (polyglot) ; JPEG + appended PHP (polyglot) | 200, the image | H |
| image | GIF / JPEG headers claiming 65535 x 65535 | 413 too_large | H |
| image | 3000 x 2500 (7.5 Mpx, over this server's 4 Mpx limit) | 413 too_large | H |
| image | 8 x 4000 strip (align none / auto) | 200 / 422 no_face | H |
| image | animated GIF, multi-page TIFF | 200, first frame | H |
| image | CMYK JPEG, 16-bit grey PNG, 16-bit RGB PNG, RGBA PNG, palette PNG with transparency, greyscale+alpha | 200 | H |
| image | EXIF orientation 6 (rotated) | 200, rotated size | H |
| image | corrupt EXIF block | 200 | H |
| image | EPS (Ghostscript must never run), ICO, PSD-like, SVG, PDF, HTML | 415 | H |
| image | PNG with a zTXt bomb (text chunk inflating to 64 MB) | 4xx | H |
| image | truncated PNG, PNG with a bad CRC | 422 corrupt | H |
| image | PNG sent as text/plain; text sent as image/png | 200; 415 | H |
| body | JSON / urlencoded body to /v1/synthesize | 422 | H |
| body | chunked body (no Content-Length) over the limit | 413 | H |
| body | body that stops coming (slowloris) | 408 request_timeout | H |
| body | 1100 file parts to /v1/embed | 400 bad_request | H |
| names | unicode + RTL-override file name, 10 000-char file name, "../../etc/passwd.png" | 200 | H |
| params | variants NaN / inf / 1e3 / 10^23, height 24.5, seed 2^200, unknown field, repeated field | 422 / 200 | H |
| jobs | input_dir of 5000 chars, NUL byte, %2e%2e, backslashes, C:\\, //etc, ~root, file:// URL | 400 | H |
| jobs | input_dir 123 / [] / null; JSON nested 100 000 deep; JSON over 64 KiB; NaN; 1e400; seed -1; top-level list; bad UTF-8 | 422 / 413 | H |
| jobs | unknown form field in a multipart job | 422 | H |
| jobs | folder holding a file whose name is not UTF-8 | 202, listed as bad_name | H |
| archive | tar hardlink, tar FIFO, tar block device, zip char-device entry, zip "encrypted" member | 400 unsafe_archive | H |
| archive | tar.gz bomb (headers), zip lying about its sizes, truncated zip, truncated tar.gz, zero-byte upload | 413 / 400 / 415 | H |
| archive | empty zip, zip inside a zip | 422 no_images | H |
| archive | unicode member names | 202 | H |
| archive | 300-char member name, non-UTF-8 tar name, file/folder overlap, duplicate members, link then file below it | 400 | H |
| http | TRACE, job id of 10 000 chars | 405, 404 | H |
| jobs | input_dir that is a loop of links; a loop of links inside the folder | 400 invalid_path; 202, listed as unreadable | H |
| body | client gone mid-body (/v1/jobs, /v1/embed) | 499 in the access log and metrics, no 500, no traceback | H |
"""
from __future__ import annotations

import io
import json
import socket
import stat
import struct
import tarfile
import time
import zipfile
import zlib

import httpx
import numpy as np
import pytest
from PIL import Image

from service_helpers import HR_FACES, make_faces, png_bytes, wait_for

pytestmark = [pytest.mark.redis, pytest.mark.process]

MAX_UPLOAD = 2 * 1024 * 1024
MAX_PIXELS = 4_000_000
BODY_TIMEOUT = 2


SERVER_ENV = dict(
    LRFACE_MAX_UPLOAD_BYTES=MAX_UPLOAD, LRFACE_MAX_IMAGE_PIXELS=MAX_PIXELS, LRFACE_MAX_EMBED_IMAGES=4,
    LRFACE_MAX_ARCHIVE_BYTES=2 * 1024 * 1024, LRFACE_MAX_ARCHIVE_MEMBERS=20,
    LRFACE_MAX_ARCHIVE_TOTAL_BYTES=8 * 1024 * 1024, LRFACE_MAX_ARCHIVE_RATIO=50,
    LRFACE_BODY_TIMEOUT=BODY_TIMEOUT, LRFACE_BODY_IDLE_TIMEOUT=BODY_TIMEOUT,
)


def prepare_server(tmp):
    data = tmp / "data"
    make_faces(data / "faces", 2)
    with open(bytes(data / "faces") + b"/caf\xe9.png", "wb") as f:  # a name that is not UTF-8
        f.write(HR_FACES[0].read_bytes())


@pytest.fixture(scope="module")
def http(server):
    with httpx.Client(base_url=server.base_url, timeout=30.0) as client:
        yield client


def _error(response, status: int | tuple[int, ...], code: str | None = None) -> dict:
    statuses = status if isinstance(status, tuple) else (status,)
    assert response.status_code in statuses, response.text[:500]
    assert response.headers["content-type"].startswith("application/json"), response.headers
    body = response.json()
    assert isinstance(body.get("error"), str) and isinstance(body.get("message"), str), body
    if code is not None:
        assert body["error"] == code, body
    return body


def _ok(response) -> dict:
    assert response.status_code == 200, response.text[:500]
    return response.json()


# -- image builders --------------------------------------------------------------------------------------------

FACE = np.asarray(Image.open(HR_FACES[0]).convert("RGB"))  # 112 x 96
FACE_JPEG = HR_FACES[0].read_bytes()


def _save(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def _png_raw(ihdr: bytes, rows: bytes, extra: bytes = b"") -> bytes:
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + extra + _chunk(b"IDAT", zlib.compress(rows)) + _chunk(b"IEND", b"")


def png16_rgb() -> bytes:
    h, w = FACE.shape[:2]
    a = (FACE.astype(">u2") * 257)
    rows = b"".join(b"\x00" + a[y].tobytes() for y in range(h))
    return _png_raw(struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0), rows)


def png_ztxt_bomb() -> bytes:
    text = b"Comment\x00\x00" + zlib.compress(b"\0" * (64 * 1024 * 1024), 9)
    h, w = FACE.shape[:2]
    rows = b"".join(b"\x00" + FACE[y].tobytes() for y in range(h))
    return _png_raw(struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0), rows, extra=_chunk(b"zTXt", text))


def png_bad_crc() -> bytes:
    data = bytearray(png_bytes(FACE))
    idat = data.index(b"IDAT")
    data[idat + 20] ^= 0xFF  # a byte of the compressed data: the chunk's CRC no longer matches
    return bytes(data)


def gif_huge_header() -> bytes:
    return (b"GIF89a" + struct.pack("<HH", 65535, 65535) + b"\x00\x00\x00"
            + b",\x00\x00\x00\x00" + struct.pack("<HH", 65535, 65535) + b"\x00\x02\x02\x44\x01\x00;")


def jpeg_huge_header() -> bytes:
    data = bytearray(FACE_JPEG)
    for marker in (b"\xff\xc0", b"\xff\xc2", b"\xff\xc1"):
        at = data.find(marker)
        if at >= 0:
            data[at + 5:at + 9] = struct.pack(">HH", 65500, 65500)
            return bytes(data)
    raise AssertionError("no SOF marker in the fixture JPEG")


def animated_gif() -> bytes:
    frames = [Image.fromarray(np.roll(FACE, 7 * i, axis=1)) for i in range(12)]
    return _save(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=40, loop=0)


def multipage_tiff() -> bytes:
    frames = [Image.fromarray(FACE), Image.fromarray(FACE[::-1]), Image.fromarray(255 - FACE)]
    return _save(frames[0], "TIFF", save_all=True, append_images=frames[1:])


def exif_rotated() -> bytes:
    landscape = Image.fromarray(np.ascontiguousarray(np.rot90(FACE)))  # stored 96 high x 112 wide
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display": upright it is 112 high x 96 wide
    return _save(landscape, "JPEG", exif=exif.tobytes())


def corrupt_exif() -> bytes:
    app1 = b"Exif\x00\x00MM\x00\x2a\x00\x00\x00\x08" + b"\xff" * 64
    return FACE_JPEG[:2] + b"\xff\xe1" + struct.pack(">H", len(app1) + 2) + app1 + FACE_JPEG[2:]


def palette_transparent() -> bytes:
    img = Image.fromarray(FACE).convert("P", palette=Image.Palette.ADAPTIVE)
    return _save(img, "PNG", transparency=0)


def rgba() -> bytes:
    alpha = np.tile(np.linspace(0, 255, FACE.shape[1], dtype=np.uint8), (FACE.shape[0], 1))
    return _save(Image.fromarray(np.dstack([FACE, alpha]), "RGBA"), "PNG")


def grey_alpha() -> bytes:
    return _save(Image.fromarray(FACE).convert("LA"), "PNG")


EPS = (b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 96 112\n%%EndComments\n"
       b"(/etc/passwd) (r) file pop\nshowpage\n%%EOF\n")
PDF = b"%PDF-1.4\n1 0 obj<</Type/Catalog>>endobj\ntrailer<</Root 1 0 R>>\n%%EOF\n"
SVG = b"<svg xmlns='http://www.w3.org/2000/svg' width='96' height='112'><script>alert(1)</script></svg>"
HTML = b"<!doctype html><html><body><img src=x onerror=alert(1)></body></html>"
PSD_LIKE = b"8BPS\x00\x01" + b"\x00" * 6 + struct.pack(">HIIHH", 3, 112, 96, 8, 3) + b"\x00" * 64


def _upload(name: str, data: bytes, media: str = "application/octet-stream"):
    return {"image": (name, data, media)}


# -- images: refused -------------------------------------------------------------------------------------------

REFUSED_IMAGES = [
    ("zero-byte-file", b"", 422, "empty"),
    ("gif-header-65535x65535", gif_huge_header(), 413, "too_large"),
    ("jpeg-header-65500x65500", jpeg_huge_header(), 413, "too_large"),
    ("over-the-pixel-limit-3000x2500", _save(Image.new("RGB", (3000, 2500), (120, 110, 100)), "PNG"), 413, "too_large"),
    ("eps-never-rendered", EPS, 415, "unsupported_format"),
    ("ico", _save(Image.fromarray(FACE).resize((64, 64)), "ICO"), 415, "unsupported_format"),
    ("psd-like-header", PSD_LIKE, 415, None),
    ("svg-with-script", SVG, 415, "not_an_image"),
    ("pdf", PDF, 415, "not_an_image"),
    ("html", HTML, 415, "not_an_image"),
    ("png-ztxt-bomb", png_ztxt_bomb(), (413, 415, 422), None),
    ("truncated-png", png_bytes(FACE)[:300], 422, "corrupt"),
    ("png-bad-crc", png_bad_crc(), 422, "corrupt"),
    ("text-sent-as-image-png", b"just words, not pixels\n" * 10, 415, "not_an_image"),
]


@pytest.mark.parametrize("name, data, status, code", REFUSED_IMAGES, ids=[c[0] for c in REFUSED_IMAGES])
def test_hostile_images_are_refused(http, name, data, status, code):
    media = "image/png" if name.startswith("text-sent") else "application/octet-stream"
    body = _error(http.post("/v1/synthesize", files=_upload(f"{name}.png", data, media), data={"variants": "1"}),
                  status, code)
    assert body.get("filename") in (None, f"{name}.png")


# -- images: processed -----------------------------------------------------------------------------------------

ACCEPTED_IMAGES = [
    ("polyglot-png-plus-zip", png_bytes(FACE) + b"PK\x03\x04" + b"\x00" * 26 + b"evil.sh#!/bin/sh\nrm -rf /\n", (112, 96)),
    ("polyglot-jpeg-plus-php", FACE_JPEG + b"<?php system($_GET['c']); ?>", (112, 96)),
    ("animated-gif-12-frames", animated_gif(), (112, 96)),
    ("multipage-tiff", multipage_tiff(), (112, 96)),
    ("cmyk-jpeg", _save(Image.fromarray(FACE).convert("CMYK"), "JPEG"), (112, 96)),
    ("grey-16-bit-png", _save(Image.fromarray((FACE.mean(2) * 257).astype(np.uint16)), "PNG"), (112, 96)),
    ("rgb-16-bit-png", png16_rgb(), (112, 96)),
    ("rgba-png", rgba(), (112, 96)),
    ("palette-png-with-transparency", palette_transparent(), (112, 96)),
    ("grey-alpha-png", grey_alpha(), (112, 96)),
    ("exif-orientation-6", exif_rotated(), (112, 96)),
    ("corrupt-exif-block", corrupt_exif(), (112, 96)),
    ("png-sent-as-text-plain", png_bytes(FACE), (112, 96)),
    ("strip-8x4000", png_bytes(np.tile(FACE[:8, :1], (1, 4000, 1))), (8, 4000)),
]


@pytest.mark.parametrize("name, data, shape", ACCEPTED_IMAGES, ids=[c[0] for c in ACCEPTED_IMAGES])
def test_unusual_but_valid_images_are_processed(http, name, data, shape):
    media = "text/plain" if "text-plain" in name else "application/octet-stream"
    # (align=none: the strip is not shaped like a face crop, which without align would mean "find the face")
    body = _ok(http.post("/v1/embed", files=[("images", (f"{name}.img", data, media))], data={"align": "none"}))
    (item,) = body["items"]
    assert (item["height"], item["width"]) == shape, item  # decoded upright, frame 0, as RGB
    assert np.isclose(np.linalg.norm(body["embeddings"][0]), 1.0, atol=1e-4)
    synth = _ok(http.post("/v1/synthesize", files=_upload(f"{name}.img", data, media), data={"variants": "1", "seed": "1"}))
    assert len(synth["variants"]) == 1


def test_a_strip_with_align_auto_has_no_face(http):
    strip = png_bytes(np.tile(FACE[:4, :1], (1, 3000, 1)))
    _error(http.post("/v1/synthesize", files=_upload("strip.png", strip), data={"align": "auto"}), 422, "no_face")


# -- request bodies --------------------------------------------------------------------------------------------

def test_json_body_to_synthesize(http):
    _error(http.post("/v1/synthesize", json={"image": "aGVsbG8=", "variants": 1}), 422, "validation_error")


def test_urlencoded_body_to_synthesize(http):
    _error(http.post("/v1/synthesize", data={"image": "not a file", "variants": "1"}), 422, "validation_error")


def test_chunked_body_over_the_limit(http):
    def body():
        head = b'--b\r\nContent-Disposition: form-data; name="image"; filename="x.png"\r\nContent-Type: image/png\r\n\r\n'
        yield head
        for _ in range(MAX_UPLOAD // 65536 + 20):  # no Content-Length: only the bytes counted on arrival can tell
            yield b"\0" * 65536

    r = http.post("/v1/synthesize", content=body(), headers={"content-type": "multipart/form-data; boundary=b"})
    _error(r, 413, "payload_too_large")


def _raw_request(server, head: bytes, body: bytes, wait: float) -> tuple[int, dict, float]:
    host, port = server.base_url.removeprefix("http://").split(":")
    start = time.monotonic()
    with socket.create_connection((host, int(port)), timeout=wait) as sock:
        sock.sendall(head + body)
        data = b""
        try:
            while chunk := sock.recv(65536):
                data += chunk
        except socket.timeout:
            raise AssertionError(f"no answer within {wait} s") from None
    elapsed = time.monotonic() - start
    header, _, payload = data.partition(b"\r\n\r\n")
    return int(header.split()[1]), json.loads(payload), elapsed


def test_a_body_that_stops_coming_times_out(server):
    head = (b"POST /v1/synthesize HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\n"
            b"Content-Length: 100000\r\n\r\n")
    status, body, elapsed = _raw_request(server, head, b"--b\r\nContent-Disposition: form-da", wait=BODY_TIMEOUT + 15)
    assert status == 408 and body["error"] == "request_timeout", body
    assert elapsed < BODY_TIMEOUT + 10


def test_too_many_file_parts(http):
    # More file parts than the multipart parser takes (1000): refused while parsing, before any part is read.
    files = [("images", (f"{i}.png", b"x", "image/png")) for i in range(1100)]
    body = _error(http.post("/v1/embed", files=files), 400, "bad_request")
    assert "too many files" in body["message"].lower()


# -- names -----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("filename", ["人脸😀\u202egnp.exe.png", "../../etc/passwd.png"],
                         ids=["unicode-rtl-override", "traversal-in-upload-name"])
def test_odd_upload_names_are_only_names(http, server, filename):
    body = _ok(http.post("/v1/embed", files=[("images", (filename, FACE_JPEG, "image/jpeg"))]))
    assert body["items"][0]["filename"] == filename
    assert _ok(http.post("/v1/synthesize", files=_upload(filename, FACE_JPEG), data={"variants": "1", "seed": "2"}))
    assert not (server.tmp / "etc").exists()


def test_a_file_name_of_10000_chars(http):
    # A file name is only a name: the face is embedded and the name comes back whole.
    name = "n" * 10_000 + ".jpg"
    body = _ok(http.post("/v1/embed", files=[("images", (name, FACE_JPEG, "image/jpeg"))]))
    assert body["items"][0]["filename"] == name
    assert len(body["embeddings"]) == 1 and len(body["embeddings"][0]) == body["dim"]


# -- parameters ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("form", [{"variants": "NaN"}, {"variants": "inf"}, {"variants": "1e3"},
                                  {"variants": "100000000000000000000000"}, {"height": "24.5"}, {"variants": "-3"}],
                         ids=["variants-nan", "variants-inf", "variants-1e3", "variants-10e23", "height-24.5",
                              "variants-negative"])
def test_non_numbers_and_huge_numbers_are_refused(http, form):
    _error(http.post("/v1/synthesize", files=_upload("a.jpg", FACE_JPEG), data=form), 422, "validation_error")


def test_a_huge_seed_is_a_seed(http):
    seed = 2**200
    body = _ok(http.post("/v1/synthesize", files=_upload("a.jpg", FACE_JPEG), data={"variants": "1", "seed": str(seed)}))
    assert body["seed"] == seed


def test_unknown_and_repeated_form_fields(http):
    body = _ok(http.post("/v1/synthesize", files=_upload("a.jpg", FACE_JPEG),
                         data={"variants": ["1", "2"], "colour": "red", "__proto__": "x"}))
    assert len(body["variants"]) in (1, 2)  # unknown fields are ignored; a repeated one is read once


# -- jobs: JSON specs ------------------------------------------------------------------------------------------

BAD_INPUT_DIRS = [
    ("5000-chars", "a" * 5000, 400, "invalid_path"),
    ("5000-chars-of-folders", "a/" * 2500, 400, "invalid_path"),
    ("nul-byte", "faces\x00/../../etc", 400, "invalid_path"),
    ("percent-encoded-dots", "%2e%2e/%2e%2e/etc", 400, "input_not_found"),
    ("backslashes", "..\\..\\etc", 400, "invalid_path"),
    ("windows-drive", "C:\\Windows", 400, "invalid_path"),
    ("double-slash", "//etc", 400, "invalid_path"),
    ("tilde", "~root", 400, "input_not_found"),
    ("file-url", "file:///etc/passwd", 400, "input_not_found"),
    ("whitespace", "   ", 400, "invalid_path"),
]


@pytest.mark.parametrize("input_dir, status, code", [c[1:] for c in BAD_INPUT_DIRS], ids=[c[0] for c in BAD_INPUT_DIRS])
def test_hostile_input_dirs(http, input_dir, status, code):
    _error(http.post("/v1/jobs", json={"input_dir": input_dir, "variants": 1}), status, code)


BAD_JSON = [
    ("input-dir-number", b'{"input_dir": 123}', 422),
    ("input-dir-list", b'{"input_dir": ["faces"]}', 422),
    ("input-dir-null", b'{"input_dir": null}', 422),
    ("nested-100000-deep", b'{"input_dir": "faces", "x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", (413, 422)),
    ("over-64-kib", b'{"input_dir": "faces", "pad": "' + b"x" * (70 * 1024) + b'"}', 413),
    ("variants-nan", b'{"input_dir": "faces", "variants": NaN}', 422),
    ("variants-1e400", b'{"input_dir": "faces", "variants": 1e400}', 422),
    ("seed-negative", b'{"input_dir": "faces", "seed": -1}', 422),
    ("top-level-list", b'[{"input_dir": "faces"}]', 422),
    ("invalid-utf8", b'{"input_dir": "fa\xff\xfeces"}', 422),
]


@pytest.mark.parametrize("payload, status", [c[1:] for c in BAD_JSON], ids=[c[0] for c in BAD_JSON])
def test_hostile_job_specs(http, payload, status):
    _error(http.post("/v1/jobs", content=payload, headers={"content-type": "application/json"}), status)


def test_unknown_form_field_in_a_multipart_job(http):
    _error(http.post("/v1/jobs", files={"archive": ("a.zip", _zip({"a.jpg": FACE_JPEG}), "application/zip")},
                     data={"variants": "1", "shell": "rm -rf /"}), 422, "validation_error")


def test_a_folder_with_a_non_utf8_file_name(http):
    r = http.post("/v1/jobs", json={"input_dir": "faces", "variants": 1})
    assert r.status_code == 202, r.text
    job = r.json()
    assert job["counts"] == {"total": 3, "done": 0, "failed": 1}
    assert [(e["source"], e["reason"]) for e in job["errors"]] == [("caf\ufffd.png", "bad_name")]
    assert http.delete(f"/v1/jobs/{job['job_id']}").status_code == 200


# -- jobs: archives --------------------------------------------------------------------------------------------

def _zip(members: dict[str, bytes], modes: dict[str, int] | None = None) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            info = zipfile.ZipInfo(name)
            info.compress_type = zipfile.ZIP_DEFLATED
            if modes and name in modes:
                info.create_system = 3
                info.external_attr = modes[name] << 16
            zf.writestr(info, data)
    return buf.getvalue()


def _tar(entries: list[tuple[str, bytes | None, bytes, str]], mode: str = "w:gz", fmt=tarfile.GNU_FORMAT) -> bytes:
    """entries: (name, type, data, linkname)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode=mode, format=fmt) as tf:
        for name, kind, data, linkname in entries:
            info = tarfile.TarInfo(name)
            info.type = kind
            info.linkname = linkname
            info.size = len(data) if kind == tarfile.REGTYPE else 0
            tf.addfile(info, io.BytesIO(data) if kind == tarfile.REGTYPE else None)
    return buf.getvalue()


def _zip_encrypted_flag() -> bytes:
    data = bytearray(_zip({"secret.jpg": FACE_JPEG}))
    for sig, offset in ((b"PK\x03\x04", 6), (b"PK\x01\x02", 8)):
        at = data.index(sig)
        data[at + offset] |= 0x1
    return bytes(data)


def _zip_lying_sizes() -> bytes:
    payload = np.random.default_rng(0).integers(0, 256, 200_000, dtype=np.uint8).tobytes()
    data = bytearray(_zip({"big.jpg": payload}))
    for sig, offset in ((b"PK\x03\x04", 22), (b"PK\x01\x02", 24)):
        at = data.index(sig)
        data[at + offset:at + offset + 4] = struct.pack("<I", 10)  # "10 bytes uncompressed"
    return bytes(data)


def _nested_zip() -> bytes:
    return _zip({"inner.zip": _zip({f"{i}.jpg": FACE_JPEG for i in range(3)})})


_BAD_NAME = b"caf\xe9.jpg".decode("utf-8", "surrogateescape")

UNSAFE_ARCHIVES = [
    ("tar-hardlink", _tar([("a.jpg", tarfile.REGTYPE, FACE_JPEG, ""), ("b.jpg", tarfile.LNKTYPE, b"", "a.jpg")]),
     400, "unsafe_archive"),
    ("tar-fifo", _tar([("pipe.jpg", tarfile.FIFOTYPE, b"", "")]), 400, "unsafe_archive"),
    ("tar-block-device", _tar([("disk.jpg", tarfile.BLKTYPE, b"", "")]), 400, "unsafe_archive"),
    ("zip-char-device-entry", _zip({"zero.jpg": b""}, modes={"zero.jpg": stat.S_IFCHR | 0o644}), 400, "unsafe_archive"),
    ("zip-encrypted-member", _zip_encrypted_flag(), 400, "unsafe_archive"),
    ("tar-gz-bomb", _tar([("zeros.jpg", tarfile.REGTYPE, b"\0" * (6 * 1024 * 1024), "")]), 413, "archive_too_large"),
    ("zip-lying-about-sizes", _zip_lying_sizes(), 400, "bad_archive"),
    ("truncated-zip", _zip({f"{i}.jpg": FACE_JPEG for i in range(3)})[:-200], 400, "bad_archive"),
    ("truncated-tar-gz", _tar([(f"{i}.jpg", tarfile.REGTYPE, FACE_JPEG, "") for i in range(3)])[:-300], 400, "bad_archive"),
    ("zero-byte-upload", b"", 415, "unsupported_archive"),
    ("empty-zip", _zip({}), 422, "no_images"),
    ("zip-inside-a-zip", _nested_zip(), 422, "no_images"),
    ("member-name-of-300-chars", _zip({"a" * 300 + ".jpg": FACE_JPEG}), 400, None),
    ("tar-name-not-utf8", _tar([(_BAD_NAME, tarfile.REGTYPE, FACE_JPEG, "")]), 400, "unsafe_archive"),
    ("file-and-folder-overlap", _zip({"a": b"x", "a/b.jpg": FACE_JPEG}), 400, "unsafe_archive"),
    ("tar-duplicate-members", _tar([("a.jpg", tarfile.REGTYPE, FACE_JPEG, ""), ("a.jpg", tarfile.REGTYPE, b"x", "")]),
     400, "unsafe_archive"),
    ("link-then-file-below-it", _tar([("d", tarfile.SYMTYPE, b"", "/etc"), ("d/passwd.jpg", tarfile.REGTYPE, b"x", "")]),
     400, "unsafe_archive"),
]


@pytest.mark.parametrize("payload, status, code", [c[1:] for c in UNSAFE_ARCHIVES], ids=[c[0] for c in UNSAFE_ARCHIVES])
def test_hostile_archives(http, server, payload, status, code):
    _error(http.post("/v1/jobs", files={"archive": ("upload.bin", payload, "application/octet-stream")},
                     data={"variants": "1"}), status, code)
    assert not list((server.tmp / "jobs" / "_uploads").glob("*/*")), "a refused archive left files behind"
    assert not (server.tmp / "etc").exists()


def test_unicode_member_names_are_fine(http):
    names = ["人脸/张三.jpg", "visages/élodie.jpg", "😀/🙂.jpg"]
    r = http.post("/v1/jobs", files={"archive": ("u.zip", _zip({n: FACE_JPEG for n in names}), "application/zip")},
                  data={"variants": "1"})
    assert r.status_code == 202, r.text
    job = r.json()
    assert job["counts"]["total"] == 3 and job["counts"]["failed"] == 0
    assert http.delete(f"/v1/jobs/{job['job_id']}").status_code == 200


# -- HTTP ------------------------------------------------------------------------------------------------------

def test_trace_is_not_allowed(http):
    _error(http.request("TRACE", "/v1/synthesize"), 405, "method_not_allowed")


def test_a_job_id_of_10000_chars(http):
    _error(http.get("/v1/jobs/" + "a" * 10_000), 404, "job_not_found")


# -- links and disconnects -------------------------------------------------------------------------------------

def test_a_loop_of_links_as_input_dir_is_a_4xx_and_the_connection_goes_on(http, server):
    loop = server.tmp / "data" / "loop"
    loop.symlink_to(loop)  # a link to itself: resolving it never ends
    _error(http.post("/v1/jobs", json={"input_dir": "loop", "variants": 1}), 400, "invalid_path")
    assert http.get("/healthz").status_code == 200  # the same keep-alive connection still serves


def test_a_loop_of_links_inside_a_folder_is_a_failed_file(http, server):
    folder = server.tmp / "data" / "loopy"
    make_faces(folder, 1)
    (folder / "loop.png").symlink_to(folder / "loop.png")
    r = http.post("/v1/jobs", json={"input_dir": "loopy", "variants": 1})
    assert r.status_code == 202, r.text
    job = r.json()
    assert [(e["source"], e["reason"]) for e in job["errors"]] == [("loop.png", "unreadable")]
    assert http.delete(f"/v1/jobs/{job['job_id']}").status_code == 200


def _statuses(http, route: str) -> dict[str, float]:
    found = {}
    for line in http.get("/metrics").text.splitlines():
        if line.startswith("lrface_http_requests_total{") and f'route="{route}"' in line:
            status = line.split('status="', 1)[1].split('"', 1)[0]
            found[status] = float(line.rsplit(" ", 1)[1])
    return found


@pytest.mark.parametrize("path, content_type, length", [
    ("/v1/jobs", "multipart/form-data; boundary=b", 1_000_000),
    ("/v1/embed", "multipart/form-data; boundary=b", 2000),
])
def test_a_client_leaving_mid_body_is_no_server_error(http, server, path, content_type, length):
    before = _statuses(http, path).get("499", 0)
    log_start = server.log_path.stat().st_size
    host, port = server.base_url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: {content_type}\r\n"
                     f"Content-Length: {length}\r\n\r\n".encode()
                     + b'--b\r\nContent-Disposition: form-data; name="archive"; filename="a.zip"\r\n\r\nPK')
        time.sleep(0.3)  # (the server is reading the body when the client goes)
    wait_for(lambda: _statuses(http, path).get("499", 0) > before, 10, 0.1, "the disconnect to be recorded")
    assert "500" not in _statuses(http, path)
    with open(server.log_path, "rb") as f:
        f.seek(log_start)
        log = f.read().decode(errors="replace")
    assert "Traceback" not in log and "unhandled error" not in log, log[-2000:]
