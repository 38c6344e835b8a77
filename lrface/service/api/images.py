"""Uploaded images -> faces ready for the models: bounded reads, the shared decoder, optional detection + alignment."""
from __future__ import annotations

import base64
import io
from enum import Enum

import numpy as np
from fastapi import UploadFile
from PIL import Image

from lrface.core.face import JPEG_FRAMES, MIN_INPUT_HEIGHT, ImageDecodeError, decode_image, encode_png, jpeg_markers
from lrface.service.api.errors import APIError, image_error
from lrface.core.detect import FaceDetector, NoFaceError, choose_align, looks_aligned

_READ_BLOCK = 256 * 1024
# Uploads of at most this many pixels in all (a few aligned face crops) are decoded on the event loop: that takes
# well under a millisecond, less than handing them to the thread pool and back. Larger ones go to the pool.
INLINE_DECODE_PIXELS = 256 * 256


class Align(str, Enum):
    none = "none"
    auto = "auto"


class ImageFormat(str, Enum):
    png = "png"
    jpeg = "jpeg"


async def read_upload(upload: UploadFile, limit: int) -> bytes:
    """The file's bytes, refusing it as soon as more than `limit` bytes have been read."""
    chunks, size = [], 0
    while True:
        block = await upload.read(_READ_BLOCK)
        if not block:
            break
        size += len(block)
        if size > limit:
            raise APIError(413, "payload_too_large", f"{upload.filename or 'the file'} exceeds {limit} bytes",
                           filename=upload.filename or "")
        chunks.append(block)
    return b"".join(chunks)


def header_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) of a PNG or JPEG, read from its header without decoding anything; None for other formats
    or a header this does not understand (the caller then takes the general path)."""
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        if len(data) < 24 or data[12:16] != b"IHDR":
            return None
        width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
        return (width, height) if width and height else None
    for marker, i in jpeg_markers(data):
        if marker in JPEG_FRAMES:
            if i + 9 > len(data):
                return None
            height, width = int.from_bytes(data[i + 5:i + 7], "big"), int.from_bytes(data[i + 7:i + 9], "big")
            return (width, height) if width and height else None
        if marker in (0xD9, 0xDA):  # end of image / start of scan before any frame header
            return None
    return None


def header_pixels(data: bytes) -> int | None:
    """width x height of a PNG or JPEG from its header (see header_size)."""
    size = header_size(data)
    return size[0] * size[1] if size else None


def declared_pixels(data: bytes) -> int:
    """width x height an image's header declares (0 when it has none that parses: the decoder refuses it later)."""
    pixels = header_pixels(data)
    if pixels is not None:
        return pixels
    try:
        with Image.open(io.BytesIO(data)) as img:
            width, height = img.size
    except Exception:  # (a decompression bomb too: the decoder refuses it from its header, before decoding)
        return 0
    return width * height


def check_pixel_budget(datas: list[bytes], budget: int) -> None:
    """413 `too_many_pixels` when the images of one request declare more than `budget` pixels in all (checked
    from their headers, before any is decoded)."""
    total = sum(declared_pixels(d) for d in datas)
    if total > budget:
        raise APIError(413, "too_many_pixels", f"the images of this request hold {total} pixels in all; the limit is "
                                               f"{budget} per request (LRFACE_MAX_REQUEST_PIXELS)")


def prepare_faces(datas: list[bytes], filenames: list[str | None], align: Align | None, max_pixels: int,
                  detector: FaceDetector | None, to_rows) -> tuple[list[tuple[np.ndarray, dict | None]], np.ndarray]:
    """`prepare_face` for each image, one at a time: each is decoded, aligned and brought to its model rows
    (`to_rows([face])`) before the next is decoded, so a request holds at most one decoded image at once.

    Returns ([(a zero-byte array of the face's height x width, detection box)], the model rows of all faces)."""
    prepared, rows = [], []
    for data, name in zip(datas, filenames):
        face, box = prepare_face(data, name, align, max_pixels, detector)
        rows.append(to_rows([face]))
        prepared.append((np.empty((face.shape[0], face.shape[1], 0), dtype=np.uint8), box))  # (its size only)
        del face
    return prepared, (np.concatenate(rows) if rows else to_rows([]))


def small_enough_inline(datas: list[bytes], align: Align | None) -> bool:
    """Whether decoding these uploads is cheap enough to do on the event loop (judged from their headers).

    Face detection (align=auto, or no align for an image not shaped like an aligned crop), formats other than
    PNG and JPEG and anything whose header does not parse go to the thread pool; errors are reported by the same
    decoder either way.
    """
    if align is Align.auto:
        return False
    total = 0
    for data in datas:
        size = header_size(data)
        if size is None or (align is None and not looks_aligned(size[1], size[0])):
            return False
        total += size[0] * size[1]
        if total > INLINE_DECODE_PIXELS:
            return False
    return True


def prepare_face(data: bytes, filename: str | None, align: Align | None, max_pixels: int,
                 detector: FaceDetector | None) -> tuple[np.ndarray, dict | None]:
    """Decode (with the pixel limit) and, for align=auto, detect the most prominent face and align it.

    align None (not given): an image shaped like an aligned crop is taken as one, anything else is aligned as
    with auto (`lrface.core.detect.choose_align`). Returns the face (an aligned crop of any size for align=none,
    112x96 for auto) and the detection box.
    """
    min_side = MIN_INPUT_HEIGHT if align is Align.none else 1
    try:
        rgb = decode_image(data, max_pixels=max_pixels, min_side=min_side)
    except ImageDecodeError as exc:
        raise image_error(exc, filename) from None
    chosen = choose_align(align.value if align is not None else None, rgb.shape[0], rgb.shape[1])
    if chosen == "none":
        if rgb.shape[0] < MIN_INPUT_HEIGHT:
            raise APIError(422, "too_small", f"the face is {rgb.shape[0]} px high; at least {MIN_INPUT_HEIGHT} px are needed",
                           filename=filename or "")
        return rgb, None
    if detector is None:
        raise APIError(503, "model_unavailable", "the face detector is not available", filename=filename or "")
    try:
        face, detection = detector.align(rgb)
    except NoFaceError:
        if align is None:
            message = (f"no face was found in the image: it is {rgb.shape[1]}x{rgb.shape[0]}, not shaped like an aligned "
                       f"112x96 face crop, so the face was looked for (as with align=auto); send align=none to use "
                       f"the whole image as the face")
        else:
            message = "no face was found in the image"
        raise APIError(422, "no_face", message, filename=filename or "") from None
    return face, detection.box()


def encode(rgb: np.ndarray, fmt: ImageFormat) -> tuple[str, str]:
    """(base64 text, media type) of an RGB image."""
    buf = io.BytesIO()
    if fmt is ImageFormat.jpeg:
        Image.fromarray(rgb, "RGB").save(buf, format="JPEG", quality=95)
        media = "image/jpeg"
    else:
        return base64.b64encode(encode_png(rgb)).decode("ascii"), "image/png"
    return base64.b64encode(buf.getvalue()).decode("ascii"), media
