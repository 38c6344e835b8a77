"""Memory of one request bounded (issue #15, item 2): a per-request pixel budget, one image decoded at a time, and
integer bit-depth conversions.

Over real HTTP against `lrface serve`, with the server's resident memory sampled while it answers:
- 32 highly compressible 36 Mpx PNGs in one 3 MB /v1/embed request (before: several GB of RSS) are refused with
  413 `too_many_pixels` from their headers, before any is decoded;
- a request at the budget (two 36 Mpx images, 8-bit RGB and 16-bit grey) is answered, holding one decoded image
  at a time;
and in process: the 16-bit / 32-bit / float / alpha conversions give the same pixels as before without float64
copies.
"""
from __future__ import annotations

import struct
import threading
import time
import tracemalloc
import zlib

import numpy as np
import pytest
from PIL import Image

from service_helpers import served_on_test_redis

SIDE = 6000  # 36 Mpx, under the 40 Mpx per-image limit


def flat_png(width: int, height: int, *, bit_depth: int = 8, color_type: int = 2, value: int = 128) -> bytes:
    """A PNG of one flat colour, compressed as far as zlib goes (36 Mpx RGB: about 100 KB)."""
    channels = {0: 1, 2: 3}[color_type]
    row = b"\x00" + bytes([value]) * (width * channels * bit_depth // 8)
    packer = zlib.compressobj(9)
    block = row * 64
    idat = b"".join(packer.compress(block) for _ in range(height // 64)) + packer.compress(row * (height % 64))
    idat += packer.flush()

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


class PeakRSS:
    """Samples a process's resident memory every 10 ms while in the `with` block; `.peak_mb` above `.start_mb`."""

    def __init__(self, pid: int):
        self.pid = pid

    def rss_mb(self) -> float:
        with open(f"/proc/{self.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
        return 0.0

    def __enter__(self):
        self.start_mb = self.peak = self.rss_mb()
        self._stop = threading.Event()

        def sample():
            while not self._stop.wait(0.01):
                self.peak = max(self.peak, self.rss_mb())

        self._thread = threading.Thread(target=sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.rss_mb())
        self.grown_mb = self.peak - self.start_mb


@pytest.fixture(scope="module")
def server(tmp_path_factory, mrgan_path, embedder_path):
    tmp = tmp_path_factory.mktemp("pixel-budget")
    # The default limits (40 Mpx per image, 100 Mpx per request, 32 images, 10 MB per file).
    with served_on_test_redis(tmp, mrgan_path, embedder_path) as srv:
        with srv.client() as http:  # warm up: the first request loads what it needs
            from service_helpers import HR_FACES

            assert http.post("/v1/embed", files=[("images", HR_FACES[0].read_bytes())]).status_code == 200
        yield srv


def test_many_compressible_huge_images_are_refused_from_their_headers(server):
    image = flat_png(SIDE, SIDE)
    assert len(image) < 200_000
    files = [("images", (f"big{i}.png", image, "image/png")) for i in range(32)]
    with server.client() as http, PeakRSS(server.proc.pid) as rss:
        start = time.monotonic()
        r = http.post("/v1/embed", files=files, data={"align": "none"})
        elapsed = time.monotonic() - start
    print(f"32 x {SIDE}x{SIDE} PNG ({len(image) * 32 / 1e6:.1f} MB): {r.status_code} in {elapsed:.2f} s, "
          f"RSS +{rss.grown_mb:.0f} MB")
    assert r.status_code == 413 and r.json()["error"] == "too_many_pixels", r.text
    assert "LRFACE_MAX_REQUEST_PIXELS" in r.json()["message"]
    assert rss.grown_mb < 100, f"the server grew by {rss.grown_mb:.0f} MB for a refused request"


def test_a_request_at_the_budget_is_answered_holding_one_decoded_image_at_a_time(server):
    rgb = flat_png(SIDE, SIDE)
    grey16 = flat_png(SIDE, SIDE, bit_depth=16, color_type=0, value=200)
    files = [("images", ("rgb.png", rgb, "image/png")), ("images", ("grey16.png", grey16, "image/png"))]
    with server.client() as http, PeakRSS(server.proc.pid) as rss:
        r = http.post("/v1/embed", files=files, data={"align": "none"})
    print(f"2 x {SIDE}x{SIDE} (8-bit RGB + 16-bit grey): {r.status_code}, RSS +{rss.grown_mb:.0f} MB "
          f"(peak {rss.peak:.0f} MB)")
    assert r.status_code == 200, r.text
    assert [(i["width"], i["height"]) for i in r.json()["items"]] == [(SIDE, SIDE)] * 2
    # One decoded 36 Mpx image is 108 MB as RGB (Pillow holds 144 MB while decoding); two held at once, or a
    # float64 copy of the 16-bit one (288 MB), would pass this bound.
    assert rss.grown_mb < 450, f"the server grew by {rss.grown_mb:.0f} MB"


def test_bit_depth_conversions_are_integer_and_give_the_same_pixels():
    from lrface.core.face import _to_rgb, decode_image

    def float64_way(img):  # the conversion before: float64 copies of the whole image
        a = np.asarray(img, dtype=np.float64)
        top = 65535.0 if a.max() > 255 else 255.0
        return np.clip(a / top * 255.0 + 0.5, 0, 255).astype(np.uint8)

    rng = np.random.default_rng(0)
    for arr in (rng.integers(0, 65536, (61, 47), dtype=np.uint16), rng.integers(0, 256, (61, 47), dtype=np.uint16),
                rng.integers(-70000, 70000, (61, 47), dtype=np.int32)):
        img = Image.fromarray(arr)
        expected = float64_way(img)
        assert (np.asarray(_to_rgb(img)) == np.repeat(expected[:, :, None], 3, axis=2)).all()
    rgba = rng.integers(0, 256, (61, 47, 4), dtype=np.uint8)
    img = Image.fromarray(rgba, "RGBA")
    background = Image.new("RGBA", img.size, (255, 255, 255, 255))
    assert (np.asarray(_to_rgb(img)) == np.asarray(Image.alpha_composite(background, img).convert("RGB"))).all()

    # A 16-bit 4 Mpx PNG: numpy's allocations while decoding stay far below one float64 copy (32 MB).
    png = flat_png(2000, 2000, bit_depth=16, color_type=0, value=77)
    tracemalloc.start()
    try:
        rgb = decode_image(png)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert rgb.shape == (2000, 2000, 3) and int(rgb[0, 0, 0]) == round((77 * 256 + 77) * 255 / 65535)
    assert peak < 24 * 1024 * 1024, f"decoding allocated {peak / 2**20:.0f} MB at its peak"
