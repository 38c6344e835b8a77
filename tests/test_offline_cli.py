"""`lrface augment`, `lrface synth` and `lrface embed` end to end, as subprocesses on tests/fixtures."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lrface.core.face import lr_width_for_height

FIXTURES = Path(__file__).parent / "fixtures"
SOURCES = sorted(p.relative_to(FIXTURES / "hr").as_posix() for p in (FIXTURES / "hr").rglob("*.jpg"))


def lrface(*args, check_rc: int | None = 0) -> subprocess.CompletedProcess:
    script = Path(sys.executable).with_name("lrface")
    cmd = [str(script)] if script.exists() else [sys.executable, "-m", "lrface.service.cli"]
    proc = subprocess.run(cmd + [str(a) for a in args], capture_output=True, text=True, timeout=120)
    if check_rc is not None:
        assert proc.returncode == check_rc, f"rc {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    return proc


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def tree_bytes(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture
def input_dir(tmp_path) -> Path:
    shutil.copytree(FIXTURES / "hr", tmp_path / "in")
    return tmp_path / "in"


@pytest.fixture(scope="module")
def first_run(tmp_path_factory, mrgan_path) -> Path:
    """One `lrface augment --variants 2` of the fixture faces, shared by the read-only checks."""
    out = tmp_path_factory.mktemp("augment") / "out"
    lrface("augment", FIXTURES / "hr", out, "--variants", 2, "--seed", 3, "--model", mrgan_path)
    return out


def test_augment_writes_each_variant_at_its_manifest_size(first_run):
    rows = read_jsonl(first_run / "manifest.jsonl")
    expected = [(src, f"{src[:-4]}_{k}.png", k) for src in SOURCES for k in range(2)]
    assert [(r["source"], r["output"], r["k"]) for r in rows] == expected
    for r in rows:
        assert set(r) == {"source", "output", "k", "seed", "height", "width"} and r["seed"] == 3
        assert r["width"] == lr_width_for_height(r["height"])
        with Image.open(first_run / r["output"]) as im:
            assert im.size == (r["width"], r["height"]) and im.mode == "RGB"
    assert not (first_run / "errors.jsonl").exists()
    assert sorted(p.relative_to(first_run).as_posix() for p in first_run.rglob("*.png")) == sorted(e[1] for e in expected)


def test_augment_rerun_is_byte_identical(first_run, tmp_path, mrgan_path):
    out = tmp_path / "again"
    lrface("augment", FIXTURES / "hr", out, "--variants", 2, "--seed", 3, "--model", mrgan_path, "--batch-size", 3)
    assert tree_bytes(out) == tree_bytes(first_run)


def test_resumed_augment_skips_existing_outputs_and_rebuilds_the_same_manifest(first_run, tmp_path, mrgan_path):
    out = tmp_path / "out"
    shutil.copytree(first_run, out)
    before = tree_bytes(out)
    removed = out / "Alex_Penelas" / "Alex_Penelas_0002_1.png"
    removed.unlink()
    (out / "manifest.jsonl").unlink()
    kept = out / "Aaron_Sorkin" / "Aaron_Sorkin_0001_0.png"
    kept_mtime = kept.stat().st_mtime_ns
    proc = lrface("augment", FIXTURES / "hr", out, "--variants", 2, "--seed", 3, "--model", mrgan_path)
    assert "1 done, 5 skipped, 0 failed" in proc.stdout
    assert tree_bytes(out) == before
    assert kept.stat().st_mtime_ns == kept_mtime


def test_unreadable_file_is_reported_and_not_fatal(input_dir, tmp_path, mrgan_path):
    (input_dir / "Aaron_Sorkin" / "broken.jpg").write_bytes(b"not an image")
    out = tmp_path / "out"
    proc = lrface("augment", input_dir, out, "--variants", 1, "--model", mrgan_path)
    assert "Aaron_Sorkin/broken.jpg" in proc.stderr
    assert "6 done, 0 skipped, 1 failed" in proc.stdout
    errors = read_jsonl(out / "errors.jsonl")
    assert [(e["source"], e["reason"]) for e in errors] == [("Aaron_Sorkin/broken.jpg", "not_an_image")]
    assert len(read_jsonl(out / "manifest.jsonl")) == 6


def test_long_file_names_are_written_or_failed_one_by_one(input_dir, tmp_path, mrgan_path):
    """A 230-byte name (its output fits the 255-byte limit, its temp file once did not) is written; a 254-byte
    one, whose output name would be too long, is a failure of that file alone, and the run goes on."""
    face = (input_dir / "Aaron_Sorkin").glob("*.jpg").__next__()
    fits, too_long = "b" * 226 + ".jpg", "a" * 250 + ".jpg"
    shutil.copy(face, input_dir / fits)
    shutil.copy(face, input_dir / too_long)
    out = tmp_path / "out"
    proc = lrface("augment", input_dir, out, "--variants", 2, "--model", mrgan_path)
    assert "7 done, 0 skipped, 1 failed" in proc.stdout
    errors = read_jsonl(out / "errors.jsonl")
    assert [(e["source"], e["reason"]) for e in errors] == [(too_long, "name_too_long")]
    assert str(tmp_path) not in errors[0]["message"]
    rows = read_jsonl(out / "manifest.jsonl")
    assert len(rows) == 14 and {r["output"] for r in rows if r["source"] == fits} == {"b" * 226 + "_0.png", "b" * 226 + "_1.png"}
    assert not [p.name for p in out.rglob("*") if p.name.endswith(".tmp")]


def test_output_folder_inside_the_input_folder_is_not_walked(input_dir, mrgan_path):
    out = input_dir / "variants"
    lrface("augment", input_dir, out, "--variants", 1, "--model", mrgan_path)
    proc = lrface("augment", input_dir, out, "--variants", 1, "--model", mrgan_path)
    assert "0 done, 6 skipped, 0 failed" in proc.stdout
    assert len(read_jsonl(out / "manifest.jsonl")) == 6


def test_canvas_outputs_are_112x96(tmp_path, mrgan_path):
    out = tmp_path / "out"
    lrface("augment", FIXTURES / "hr", out, "--variants", 1, "--canvas", "--model", mrgan_path)
    for r in read_jsonl(out / "manifest.jsonl"):
        with Image.open(out / r["output"]) as im:
            assert im.size == (96, 112)


def test_fixed_height_gives_every_output_that_height(tmp_path, mrgan_path):
    out = tmp_path / "out"
    lrface("augment", FIXTURES / "hr", out, "--variants", 2, "--height", 24, "--model", mrgan_path)
    rows = read_jsonl(out / "manifest.jsonl")
    assert len(rows) == 12 and {(r["height"], r["width"]) for r in rows} == {(24, lr_width_for_height(24))}
    for r in rows:
        with Image.open(out / r["output"]) as im:
            assert im.size == (lr_width_for_height(24), 24)


@pytest.mark.parametrize("args, message", [
    (["--variants", 1, "--height", 200], "--height"),
    (["--variants", 1, "--min-height", 40, "--max-height", 30], "--max-height"),
    (["--variants", 1, "--height", 30, "--min-height", 20], "either"),
    (["--variants", 0], "--variants"),
])
def test_invalid_arguments_exit_1_with_a_message(tmp_path, mrgan_path, args, message):
    proc = lrface("augment", FIXTURES / "hr", tmp_path / "out", *args, "--model", mrgan_path, check_rc=1)
    assert message in proc.stderr
    assert not any((tmp_path / "out").rglob("*.png"))


def test_missing_or_empty_input_folder_exits_1(tmp_path):
    proc = lrface("augment", tmp_path / "nope", tmp_path / "out", "--variants", 1, check_rc=1)
    assert "does not exist" in proc.stderr
    (tmp_path / "empty").mkdir()
    proc = lrface("augment", tmp_path / "empty", tmp_path / "out", "--variants", 1, check_rc=1)
    assert "no images" in proc.stderr


def test_synth_writes_the_same_variants_as_augment_on_its_folder(tmp_path, mrgan_path):
    single = tmp_path / "single"
    single.mkdir()
    shutil.copy(FIXTURES / "hr" / SOURCES[0], single / "face.jpg")
    lrface("augment", single, tmp_path / "a", "--variants", 3, "--seed", 1, "--model", mrgan_path)
    proc = lrface("synth", single / "face.jpg", "--variants", 3, "--seed", 1, "--out", tmp_path / "s", "--model", mrgan_path)
    assert proc.stdout.split() == [str(tmp_path / "s" / f"face_{k}.png") for k in range(3)]
    assert tree_bytes(tmp_path / "s") == tree_bytes(tmp_path / "a")


def test_synth_of_an_unreadable_image_exits_1(tmp_path, mrgan_path):
    (tmp_path / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    proc = lrface("synth", tmp_path / "bad.png", "--variants", 1, "--out", tmp_path / "s", "--model", mrgan_path, check_rc=1)
    assert "bad.png" in proc.stderr


def test_embed_writes_relative_paths_and_normalised_embeddings(tmp_path, embedder_path):
    shutil.copytree(FIXTURES / "lr", tmp_path / "in")
    (tmp_path / "in" / "broken.png").write_bytes(b"nope")
    out = tmp_path / "emb.npz"
    proc = lrface("embed", tmp_path / "in", "--out", out, "--model", embedder_path, "--batch-size", 4)
    assert "broken.png" in proc.stderr
    with np.load(out, allow_pickle=False) as z:
        paths, emb = z["paths"], z["embeddings"]
    assert paths.dtype.kind == "U"
    assert list(paths) == sorted(p.relative_to(FIXTURES / "lr").as_posix() for p in (FIXTURES / "lr").rglob("*.png"))
    assert emb.dtype == np.float32 and emb.shape[0] == len(paths)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
