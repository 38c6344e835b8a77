"""Face geometry and image conventions shared by training, export and inference (numpy + Pillow; simplejpeg if present).

Everything that says what an "aligned face" is lives here, once:
- the 112x96 (height x width) five-point template and the eyes / nose / mouth regions on it,
- the one image decoder, with its limits (pixel count, formats),
- the value-range convention of every network input and output: RGB, float32, NCHW, in [-1, 1],
- the one resize path from a face of any size to the model canvas, and from the canvas to a native LR size,
- the one similarity-transform alignment from five landmarks to the template.
"""
from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps

FACE_HEIGHT = 112
FACE_WIDTH = 96

# (x, y) of left eye, right eye, nose tip, left mouth corner, right mouth corner on the 112x96 canvas.
TEMPLATE_LANDMARKS = np.array(
    [
        [30.2946, 51.6963],
        [65.5318, 51.5014],
        [48.0252, 71.7366],
        [33.5493, 92.3655],
        [62.7299, 92.2041],
    ],
    dtype=np.float32,
)


@dataclass(frozen=True)
class Region:
    """A rectangle on the aligned canvas: rows top..top+height, columns left..left+width."""

    name: str
    top: int
    left: int
    height: int
    width: int

    @property
    def slices(self) -> tuple[slice, slice]:
        return slice(self.top, self.top + self.height), slice(self.left, self.left + self.width)


def _region_around(name: str, cx: float, cy: float, height: int, width: int) -> Region:
    top = int(round(cy - height / 2))
    left = int(round(cx - width / 2))
    top = min(max(top, 0), FACE_HEIGHT - height)
    left = min(max(left, 0), FACE_WIDTH - width)
    return Region(name, top, left, height, width)


_eyes_c = TEMPLATE_LANDMARKS[:2].mean(axis=0)
_mouth_c = TEMPLATE_LANDMARKS[3:].mean(axis=0)
# Patch sizes (height x width) are the paper's local patches (supplementary section 5): eyes 20x72,
# nose 32x20, mouth 24x52. The nose patch is centred a little above the tip so it covers the bridge.
REGIONS: tuple[Region, ...] = (
    _region_around("eyes", float(_eyes_c[0]), float(_eyes_c[1]), 20, 72),
    _region_around("nose", float(TEMPLATE_LANDMARKS[2, 0]), float(TEMPLATE_LANDMARKS[2, 1]) - 8.0, 32, 20),
    _region_around("mouth", float(_mouth_c[0]), float(_mouth_c[1]), 24, 52),
)
REGION_BY_NAME = {r.name: r for r in REGIONS}

# Native LR capture heights of the target domain (lr-train spans 18-56 px high).
LR_MIN_HEIGHT = 18
LR_MAX_HEIGHT = 56
MIN_INPUT_HEIGHT = 8  # below this nothing face-like is left; decode rejects it for embedding/synthesis

ALLOWED_FORMATS = ("JPEG", "PNG", "WEBP", "BMP", "TIFF", "GIF", "PPM")
DEFAULT_MAX_PIXELS = 40_000_000


class ImageDecodeError(ValueError):
    """The bytes are not an acceptable image. `reason` is a short machine-readable code."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason
        self.message = message


def lr_width_for_height(height: int) -> int:
    """Width of an LR capture of this height, keeping the 112:96 canvas aspect."""
    return max(1, int(round(height * FACE_WIDTH / FACE_HEIGHT)))


try:  # libjpeg-turbo straight to RGB: the same pixels as Pillow's JPEG decoder (both are libjpeg-turbo with its
    import simplejpeg  # accurate defaults), without Pillow's per-image overhead
except ImportError:  # pragma: no cover - optional speed-up
    simplejpeg = None

# Segments a plain JPEG may carry before its frame for the fast path: JFIF / JFXX (APP0), Adobe (APP14), comments,
# tables, restart interval. Anything else (EXIF orientation in APP1, MPO in APP2, ...) takes Pillow's path.
_PLAIN_JPEG_SEGMENTS = frozenset({0xE0, 0xEE, 0xFE, 0xDB, 0xC4, 0xDD, 0xCC})
JPEG_FRAMES = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}  # start-of-frame markers (not DHT, JPG, DAC)


def jpeg_markers(data: bytes):
    """(marker, offset of its 0xFF) of each JPEG marker from the start of image on, skipping fill bytes; stops at
    the end of the data or at bytes that are not a marker. The caller decides when to stop reading."""
    if data[:2] != b"\xff\xd8":
        return
    i, n = 2, len(data)
    while i + 4 <= n:
        if data[i] != 0xFF:
            return
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        yield marker, i
        if marker == 0x01 or 0xD0 <= marker <= 0xD8:  # markers without a length
            i += 2
        else:
            i += 2 + int.from_bytes(data[i + 2:i + 4], "big")


def _is_plain_jpeg(data: bytes) -> bool:
    for marker, _ in jpeg_markers(data):
        if marker in JPEG_FRAMES:
            return True
        if marker not in _PLAIN_JPEG_SEGMENTS:
            return False
    return False


def _decode_plain_jpeg(data: bytes, max_pixels: int, min_side: int) -> np.ndarray | None:
    """The RGB pixels of a plain baseline / progressive JPEG within the limits, or None: then Pillow decodes it
    (and raises the errors, so they are the same either way)."""
    if simplejpeg is None or not _is_plain_jpeg(data):
        return None
    try:
        height, width, colorspace, _ = simplejpeg.decode_jpeg_header(data)
        if colorspace not in ("YCbCr", "Gray") or width < 1 or height < 1:
            return None
        if width * height > max_pixels or min(width, height) < min_side:
            return None
        rgb = simplejpeg.decode_jpeg(data, colorspace="RGB", strict=True)
    except Exception:
        return None
    if rgb.ndim != 3 or rgb.shape != (height, width, 3):
        return None
    return np.ascontiguousarray(rgb)


def decode_image(
    data: bytes,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    allowed_formats: tuple[str, ...] = ALLOWED_FORMATS,
    min_side: int = 1,
) -> np.ndarray:
    """Decode image bytes to an RGB uint8 HxWx3 array; the one decoder every entry point uses.

    The pixel limit is checked from the header before any pixel data is decompressed, so a
    decompression bomb costs nothing. EXIF orientation is applied; greyscale, palette, CMYK, 16-bit
    and alpha images become plain RGB (alpha is composited on white); multi-frame files give frame 0.
    Plain JPEGs (no EXIF or other extra segments) are decoded by libjpeg-turbo through simplejpeg when it is
    installed: the same pixels as Pillow's, in a fraction of the time; anything it does not take goes to Pillow.
    """
    if not isinstance(data, (bytes, bytearray, memoryview)) or len(data) == 0:
        raise ImageDecodeError("empty", "the file is empty")
    if "JPEG" in allowed_formats:
        rgb = _decode_plain_jpeg(bytes(data), max_pixels, min_side)
        if rgb is not None:
            return rgb
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(bytes(data)))
            fmt = img.format
            width, height = img.size
    except Image.DecompressionBombWarning:
        raise ImageDecodeError("too_large", "image dimensions exceed the decompression-bomb guard") from None
    except Image.DecompressionBombError:
        raise ImageDecodeError("too_large", "image dimensions exceed the decompression-bomb guard") from None
    except Exception:
        raise ImageDecodeError("not_an_image", "the file is not a readable image") from None
    if fmt not in allowed_formats:
        raise ImageDecodeError("unsupported_format", f"image format {fmt!r} is not accepted; use one of {', '.join(allowed_formats)}")
    if width < 1 or height < 1:
        raise ImageDecodeError("empty", "the image has no pixels")
    if width * height > max_pixels:
        raise ImageDecodeError("too_large", f"image is {width}x{height} = {width * height} pixels; the limit is {max_pixels}")
    if min(width, height) < min_side:
        raise ImageDecodeError("too_small", f"image is {width}x{height}; the smallest side must be at least {min_side} px")
    try:
        img.seek(0)
        img.load()
        img = ImageOps.exif_transpose(img)
        img = _to_rgb(img)
        arr = np.asarray(img, dtype=np.uint8)
    except ImageDecodeError:
        raise
    except Exception:
        raise ImageDecodeError("corrupt", "the image data is truncated or corrupt") from None
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise ImageDecodeError("corrupt", "the image could not be converted to RGB")
    return np.ascontiguousarray(arr)


# Conversions of large images work on bands of about this many pixels, so their temporaries stay small.
_BAND_PIXELS = 1 << 20


def _to_rgb(img: Image.Image) -> Image.Image:
    """RGB of any mode, in integer arithmetic (no float64 copies) and in bands for the modes that need arrays."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        img = Image.fromarray(_ints_to_uint8(np.asarray(img)), "L")
    if img.mode == "F":
        a = np.asarray(img)  # float32
        out = np.empty(a.shape, dtype=np.uint8)
        for rows in _bands(a.shape):
            out[rows] = np.clip(a[rows], 0, 255)
        img = Image.fromarray(out, "L")
    if img.mode == "P":
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA"):
        return _composite_on_white(img)
    return img.convert("RGB")


def _bands(shape: tuple[int, ...]):
    step = max(1, _BAND_PIXELS // max(1, shape[1]))
    for top in range(0, shape[0], step):
        yield slice(top, top + step)


def _ints_to_uint8(a: np.ndarray) -> np.ndarray:
    """16-bit (or 32-bit integer) samples to 8 bits: x 255 / 65535 rounded when any sample is above 255, else the
    samples themselves (clipped to 0..255); integer arithmetic, one band at a time."""
    high = int(a.max()) > 255 if a.size else False
    out = np.empty(a.shape, dtype=np.uint8)
    for rows in _bands(a.shape):
        band = np.clip(a[rows], 0, 65535 if high else 255).astype(np.uint32)
        if high:
            band = (band * 510 + 65535) // 131070  # = floor(x * 255 / 65535 + 0.5)
        out[rows] = band
    return out


def _composite_on_white(img: Image.Image) -> Image.Image:
    """An image with alpha composited on white, band by band (the same pixels as one alpha_composite)."""
    width, height = img.size
    out = Image.new("RGB", img.size)
    step = max(1, _BAND_PIXELS // max(1, width))
    for top in range(0, height, step):
        band = img.crop((0, top, width, min(height, top + step))).convert("RGBA")
        background = Image.new("RGBA", band.size, (255, 255, 255, 255))
        out.paste(Image.alpha_composite(background, band).convert("RGB"), (0, top))
    return out


def read_image(path, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Read and decode a file with the shared decoder (see `decode_image`)."""
    with open(path, "rb") as f:
        return decode_image(f.read(), max_pixels=max_pixels)


def encode_png(rgb: np.ndarray) -> bytes:
    """PNG bytes of an RGB uint8 array; deterministic (same array -> same bytes)."""
    buf = io.BytesIO()
    Image.fromarray(rgb, "RGB").save(buf, format="PNG", optimize=False, compress_level=6)
    return buf.getvalue()


def resize_rgb(rgb: np.ndarray, height: int, width: int) -> np.ndarray:
    """Resize with Pillow's antialiased bicubic filter (area-like when shrinking)."""
    if rgb.shape[0] == height and rgb.shape[1] == width:
        return rgb
    return np.asarray(Image.fromarray(rgb, "RGB").resize((width, height), Image.BICUBIC), dtype=np.uint8)


def to_canvas(rgb: np.ndarray) -> np.ndarray:
    """A face crop of any size -> the 112x96 model canvas (uint8). The one resize path into the models."""
    return resize_rgb(rgb, FACE_HEIGHT, FACE_WIDTH)


def to_lr_size(rgb: np.ndarray, height: int) -> np.ndarray:
    """A 112x96 canvas -> native LR capture size (height x lr_width_for_height(height))."""
    return resize_rgb(rgb, height, lr_width_for_height(height))


def to_model_input(faces: np.ndarray | list[np.ndarray]) -> np.ndarray:
    """RGB uint8 faces (any sizes) -> float32 N x 3 x 112 x 96 in [-1, 1]."""
    if isinstance(faces, np.ndarray) and faces.ndim == 3:
        faces = [faces]
    batch = np.stack([to_canvas(np.asarray(f, dtype=np.uint8)) for f in faces]).astype(np.float32)
    return np.ascontiguousarray((batch.transpose(0, 3, 1, 2) - 127.5) / 127.5)


def from_model_output(batch: np.ndarray) -> np.ndarray:
    """float N x 3 x H x W in [-1, 1] -> RGB uint8 N x H x W x 3."""
    x = np.clip(np.asarray(batch, dtype=np.float32) * 127.5 + 127.5, 0.0, 255.0)
    return np.ascontiguousarray(np.rint(x).astype(np.uint8).transpose(0, 2, 3, 1))


def similarity_transform(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares similarity (Umeyama) mapping src points onto dst points; a 2x3 matrix."""
    src = np.asarray(src, dtype=np.float64)
    dst = np.asarray(dst, dtype=np.float64)
    mu_s, mu_d = src.mean(0), dst.mean(0)
    s_c, d_c = src - mu_s, dst - mu_d
    cov = d_c.T @ s_c / len(src)
    u, sig, vt = np.linalg.svd(cov)
    d = np.ones(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        d[-1] = -1
    rot = u @ np.diag(d) @ vt
    var_s = (s_c**2).sum() / len(src)
    scale = (sig * d).sum() / var_s if var_s > 0 else 1.0
    t = mu_d - scale * rot @ mu_s
    return np.hstack([scale * rot, t[:, None]])


def align_face(rgb: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
    """Warp a photo so its five landmarks (x, y) land on the template; returns a 112x96 RGB crop."""
    m = similarity_transform(np.asarray(landmarks, dtype=np.float64).reshape(5, 2), TEMPLATE_LANDMARKS)
    full = np.vstack([m, [0, 0, 1]])
    inv = np.linalg.inv(full)[:2]  # Pillow wants output->input coefficients
    img = Image.fromarray(rgb, "RGB").transform(
        (FACE_WIDTH, FACE_HEIGHT), Image.AFFINE, data=tuple(inv.reshape(-1)), resample=Image.BILINEAR
    )
    return np.asarray(img, dtype=np.uint8)


# dlib's face-recognition ResNet takes 150x150 chips with more margin than our template: the fixed similarity
# warp from a 112x96 crop to dlib's chip (x' = a x - b y + tx, y' = b x + a y + ty, pixels; reference:
# ../shared/reference/dlib-resnet.md), with a replicated border. lrface.models.dlib_resnet.ChipWarp does the same in a graph.
DLIB_CHIP_SIZE = 150
TEMPLATE_TO_DLIB_CHIP = np.array([[1.509178, -0.017624, 2.416540],
                                  [0.017624, 1.509178, -34.686349]], dtype=np.float64)


def dlib_chip_coordinates(size: int = DLIB_CHIP_SIZE) -> tuple[np.ndarray, np.ndarray]:
    """For every chip pixel, the (x, y) crop position it samples (pixel centres at integers)."""
    inv = np.linalg.inv(np.vstack([TEMPLATE_TO_DLIB_CHIP, [0.0, 0.0, 1.0]]))
    v, u = np.mgrid[0:size, 0:size].astype(np.float64)
    return inv[0, 0] * u + inv[0, 1] * v + inv[0, 2], inv[1, 0] * u + inv[1, 1] * v + inv[1, 2]


def warp_to_dlib_chip(crop: np.ndarray) -> np.ndarray:
    """An aligned face of any size (resized to 112x96 first) -> dlib's 150x150 chip, bilinear, border replicated."""
    src = to_canvas(np.asarray(crop, dtype=np.uint8)).astype(np.float32)
    x, y = dlib_chip_coordinates()
    x = np.clip(x, 0, FACE_WIDTH - 1)
    y = np.clip(y, 0, FACE_HEIGHT - 1)
    x0, y0 = np.floor(x).astype(int), np.floor(y).astype(int)
    x1, y1 = np.minimum(x0 + 1, FACE_WIDTH - 1), np.minimum(y0 + 1, FACE_HEIGHT - 1)
    fx, fy = (x - x0)[..., None], (y - y0)[..., None]
    top = src[y0, x0] * (1 - fx) + src[y0, x1] * fx
    bottom = src[y1, x0] * (1 - fx) + src[y1, x1] * fx
    return np.clip(np.rint(top * (1 - fy) + bottom * fy), 0, 255).astype(np.uint8)
