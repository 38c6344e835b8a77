"""Hand-made LR baselines (lrface/training/degradations.py) and the realism two-sample test (lrface/training/realism.py)."""
from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lrface.core.face import encode_png, lr_width_for_height, read_image, resize_rgb
from lrface.training.degradations import bicubic_lr, blur_noise_jpeg_lr, file_rng

pytestmark = [pytest.mark.torch]

FIXTURES = Path(__file__).parent / "fixtures"
FACE = FIXTURES / "hr" / "Alex_Penelas" / "Alex_Penelas_0001.jpg"


# -- degradations --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("height", [8, 18, 37, 56])
def test_degradations_give_the_lr_capture_size(height):
    rgb = read_image(FACE)
    assert bicubic_lr(rgb, height).shape == (height, lr_width_for_height(height), 3)
    out = blur_noise_jpeg_lr(rgb, height, np.random.default_rng(0))
    assert out.dtype == np.uint8 and out.shape == (height, lr_width_for_height(height), 3)


def test_blur_noise_jpeg_is_deterministic_for_a_seed_and_varies_across_seeds():
    rgb = read_image(FACE)
    a = blur_noise_jpeg_lr(rgb, 30, np.random.default_rng(5))
    b = blur_noise_jpeg_lr(rgb, 30, np.random.default_rng(5))
    c = blur_noise_jpeg_lr(rgb, 30, np.random.default_rng(6))
    assert np.array_equal(a, b) and not np.array_equal(a, c)


def test_degradation_script_uses_each_stems_capture_height_and_is_reproducible(tmp_path):
    def run(out: Path) -> dict[str, bytes]:
        subprocess.run([sys.executable, "-m", "lrface.training.degradations", str(FIXTURES / "hr"), str(out),
                        "--method", "blur_noise_jpeg", "--heights-from", str(FIXTURES / "images.csv"), "--seed", "2"],
                       check=True, capture_output=True, timeout=60)
        return {p.relative_to(out).as_posix(): p.read_bytes() for p in sorted(out.rglob("*.png"))}

    first = run(tmp_path / "a")
    with open(FIXTURES / "images.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert sorted(first) == sorted(f"{r['stem']}.png" for r in rows)
    for r in rows:
        with Image.open(tmp_path / "a" / f"{r['stem']}.png") as im:
            assert im.size == (int(r["lr_width"]), int(r["lr_height"]))
    assert run(tmp_path / "b") == first


def test_file_rng_depends_on_seed_and_path_only():
    assert file_rng(1, "a/b.jpg").integers(1 << 30) == file_rng(1, "a/b.jpg").integers(1 << 30)
    assert file_rng(1, "a/b.jpg").integers(1 << 30) != file_rng(1, "a/c.jpg").integers(1 << 30)


# -- realism -------------------------------------------------------------------------------------------------

def _smooth_faces(rng: np.random.Generator, n: int, noise: float = 0.0) -> list[np.ndarray]:
    """Tiny smooth colour fields (LR-face-like blobs), optionally with strong sensor-like noise."""
    out = []
    for _ in range(n):
        small = rng.integers(40, 216, size=(4, 3, 3), dtype=np.uint8)
        img = resize_rgb(small, 28, 24).astype(np.float64)
        img += rng.normal(0, noise, img.shape) if noise else 0
        out.append(np.clip(img, 0, 255).astype(np.uint8))
    return out


def _write(folder: Path, images: list[np.ndarray]) -> Path:
    folder.mkdir(parents=True)
    for i, img in enumerate(images):
        (folder / f"{i:03d}.png").write_bytes(encode_png(img))
    return folder


@pytest.fixture(scope="module")
def realism():
    pytest.importorskip("torch")
    from lrface.training import realism

    return realism


def test_realism_tells_clearly_different_folders_apart(realism, tmp_path):
    rng = np.random.default_rng(0)
    clean = _write(tmp_path / "clean", _smooth_faces(rng, 80))
    noisy = _write(tmp_path / "noisy", _smooth_faces(rng, 80, noise=25.0))
    out = tmp_path / "r.json"
    assert realism.main([str(clean), str(noisy), "--epochs", "10", "--size", "28x24", "--threads", "1", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["accuracy_mean"] > 0.8
    (run,) = result["runs"]
    assert run["n_test"] == 80 and run["ci95"][0] <= run["accuracy"] <= run["ci95"][1]


def test_realism_on_two_halves_of_one_folder_is_near_chance(realism, tmp_path):
    rng = np.random.default_rng(1)
    faces = _smooth_faces(rng, 160)
    a, b = _write(tmp_path / "a", faces[:80]), _write(tmp_path / "b", faces[80:])
    out = tmp_path / "r.json"
    assert realism.main([str(a), str(b), "--epochs", "10", "--size", "28x24", "--threads", "1", "--repeats", "2", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert 0.3 <= result["accuracy_mean"] <= 0.7 and len(result["runs"]) == 2


def test_wilson_interval_brackets_the_proportion(realism):
    lo, hi = realism.wilson_interval(90, 100)
    assert lo < 0.9 < hi and hi - lo < 0.15
    assert realism.binomial_p_value(50, 100) > 0.4 and realism.binomial_p_value(90, 100) < 1e-10
