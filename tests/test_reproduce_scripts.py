"""The reproduce scripts the model cards quote run from any working directory: they work from the repository root,
where their default paths (the shipped MR-GAN, ../shared/data) are meant (the synth stage on the fixture faces)."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import HR_DIR

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.process


def run(script: str, stage: str, cwd: Path, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(ROOT / "lrface" / "training" / script), stage], cwd=cwd, capture_output=True,
                          text=True, timeout=300, env={**os.environ, "PYTHON": sys.executable, **env})


def test_reproduce_adapt_synth_from_another_directory(tmp_path):
    unlabeled = tmp_path / "unlabeled"
    unlabeled.mkdir()
    face = sorted(HR_DIR.rglob("*.jpg"))[0]
    shutil.copy(face, unlabeled / "u.jpg")
    (unlabeled / "images.csv").write_text("file,filled_fraction\nu.jpg,0.1\n")
    runs = tmp_path / "runs"
    done = run("reproduce_adapt.sh", "synth", tmp_path, HR=str(HR_DIR), UNLABELED=str(unlabeled), RUNS=str(runs))
    assert done.returncode == 0, done.stderr[-2000:]
    assert len(list((runs / "synth-hr-train").rglob("*_0.png"))) == len(list(HR_DIR.rglob("*.jpg")))
    assert len(list((runs / "synth-unlabeled-hr").rglob("*_0.png"))) == 1


def test_reproduce_synth_with_the_shipped_mrgan_from_another_directory(tmp_path):
    runs = tmp_path / "runs"
    done = run("reproduce.sh", "synth", tmp_path, HR=str(HR_DIR), RUNS=str(runs),
               MRGAN_ONNX="lrface/models/weights/mrgan.onnx")
    assert done.returncode == 0, done.stderr[-2000:]
    assert len(list((runs / "synth-hr-train").rglob("*.png"))) >= len(list(HR_DIR.rglob("*.jpg")))


@pytest.mark.parametrize("script", ["reproduce.sh", "reproduce_adapt.sh"])
def test_unknown_stage_is_refused(tmp_path, script):
    done = run(script, "no-such-stage", tmp_path, RUNS=str(tmp_path / "runs"))
    assert done.returncode == 2 and "unknown stage" in done.stderr
