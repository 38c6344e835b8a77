"""The JPEG fast path of lrface.core.face.decode_image (simplejpeg, libjpeg-turbo): the same pixels and the same
errors as Pillow's path, and Pillow still decodes whatever the fast path does not take (EXIF orientation, CMYK,
other formats, broken files)."""
from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

import lrface.core.face as face
from lrface.core.face import ImageDecodeError, decode_image
from service_helpers import HR_FACES

pytest.importorskip("simplejpeg")


def _jpeg(mode="RGB", size=(96, 112), exif_orientation=None, **kw) -> bytes:
    rng = np.random.default_rng(sum(size))
    if mode == "L":
        img = Image.fromarray(rng.integers(0, 256, size[::-1], dtype=np.uint8), "L")
    else:
        img = Image.fromarray(rng.integers(0, 256, (*size[::-1], 3), dtype=np.uint8), "RGB").convert(mode)
    buf = io.BytesIO()
    if exif_orientation:
        exif = Image.Exif()
        exif[0x0112] = exif_orientation
        kw["exif"] = exif.tobytes()
    img.save(buf, format="JPEG", **kw)
    return buf.getvalue()


def _both(data: bytes, monkeypatch, **kw):
    results = []
    for fast in (True, False):
        with monkeypatch.context() as m:
            if not fast:
                m.setattr(face, "simplejpeg", None)
            try:
                results.append(decode_image(data, **kw))
            except ImageDecodeError as exc:
                results.append((exc.reason, exc.message))
    return results


CASES = {
    "fixture faces": [p.read_bytes() for p in HR_FACES],
    "4:2:0": [_jpeg()],
    "4:4:4": [_jpeg(subsampling=0, quality=95)],
    "progressive": [_jpeg(progressive=True)],
    "greyscale": [_jpeg("L")],
    "odd size": [_jpeg(size=(37, 53))],
    "CMYK (Pillow)": [_jpeg("CMYK")],
    "EXIF rotated (Pillow)": [_jpeg(exif_orientation=6)],
    "truncated": [HR_FACES[0].read_bytes()[:n] for n in (300, 1200, 2500)],
}


@pytest.mark.parametrize("case", list(CASES))
def test_the_fast_path_gives_what_pillow_gives(case, monkeypatch):
    for data in CASES[case]:
        fast, slow = _both(data, monkeypatch)
        if isinstance(slow, tuple):
            assert fast == slow
        else:
            assert fast.dtype == np.uint8 and fast.flags.c_contiguous and np.array_equal(fast, slow)


def test_limits_hold_on_the_fast_path(monkeypatch):
    data = _jpeg(size=(200, 100))
    for kw in ({"max_pixels": 19_999}, {"min_side": 101}):
        fast, slow = _both(data, monkeypatch, **kw)
        assert fast == slow and fast[0] in ("too_large", "too_small")
    fast, slow = _both(data, monkeypatch, allowed_formats=("PNG",))
    assert fast == slow and fast[0] == "unsupported_format"


def test_the_fast_path_is_taken_for_plain_jpegs_only():
    assert face._is_plain_jpeg(HR_FACES[0].read_bytes())
    assert not face._is_plain_jpeg(_jpeg(exif_orientation=6))
    png = io.BytesIO()
    Image.new("RGB", (8, 8)).save(png, format="PNG")
    assert not face._is_plain_jpeg(png.getvalue())
