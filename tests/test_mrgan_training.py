"""Algorithm 1 end to end on a few generated faces: checkpoint, exact resume, pixel-loss schedule, ablation configs."""
import csv

import numpy as np
import pytest
import torch
from PIL import Image

from lrface.core.face import to_canvas, to_lr_size
from lrface.training import train_mrgan
from lrface.training.train_mrgan import RealLRPool, bottleneck, height_distribution, sample_step

ABLATIONS = ["mrgan_base", "mrgan_no_attn_loss", "mrgan_no_attention", "mrgan_no_local_gen",
             "mrgan_no_local_gen_no_attention", "mrgan_no_local_gen_no_attention_no_local_disc"]


pytestmark = [pytest.mark.torch, pytest.mark.slow, pytest.mark.usefixtures("one_torch_thread")]


@pytest.fixture(scope="module")
def faces(tmp_path_factory):
    """12 HR faces (112x96, 4 identities) and 12 LR captures of heights 18-40 (3 identities)."""
    root = tmp_path_factory.mktemp("faces")
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:112, 0:96]
    for i in range(12):
        hr = np.stack([(xx * 2 + i * 10) % 256, (yy * 2) % 256, rng.integers(0, 256, (112, 96))], -1).astype(np.uint8)
        (root / "hr" / f"id{i % 4}").mkdir(parents=True, exist_ok=True)
        Image.fromarray(hr).save(root / "hr" / f"id{i % 4}" / f"{i}.png")
        h = 18 + 2 * i
        lr = rng.integers(0, 256, (h, round(h * 96 / 112), 3), dtype=np.uint8)
        (root / "lr" / f"p{i % 3}").mkdir(parents=True, exist_ok=True)
        Image.fromarray(lr).save(root / "lr" / f"p{i % 3}" / f"{i}.png")
    return root


def train(faces, out, *extra):
    args = ["--hr", str(faces / "hr"), "--lr", str(faces / "lr"), "--out", str(out), "--device", "cpu", *extra]
    assert train_mrgan.main(args) == 0


def read_metrics(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def resumed_run(faces, tmp_path_factory):
    """mrgan_tiny: 6 steps (checkpoint), then --resume up to 11."""
    out = tmp_path_factory.mktemp("run")
    train(faces, out, "--config", "mrgan_tiny", "--steps", "6")
    first = torch.load(out / "last.pt", map_location="cpu", weights_only=True)
    train(faces, out, "--resume", "--steps", "11")
    return out, first


def test_checkpoint_has_the_contract_fields(resumed_run):
    out, first = resumed_run
    assert first["kind"] == "mrgan" and first["step"] == 6 and first["config"]["name"] == "mrgan_tiny"
    assert {"generator", "discriminators", "opt_g", "opt_d", "rng", "height_values", "height_weights"} <= set(first)
    assert first["height_values"] == list(range(18, 41, 2))
    assert sum(first["height_weights"]) == pytest.approx(1.0)
    assert not list(out.glob("*.tmp"))


def test_resume_continues_from_saved_step(resumed_run):
    out, first = resumed_run
    last = torch.load(out / "last.pt", map_location="cpu", weights_only=True)
    assert last["step"] == 11 and last["g_updates"] == 11
    changed = any(not torch.equal(first["generator"][k], last["generator"][k]) for k in first["generator"])
    assert changed, "resumed training must keep updating the generator"
    rows = read_metrics(out / "metrics.csv")
    assert [int(r["step"]) for r in rows] == list(range(1, 12))  # appended, no header repeated
    assert (out / "samples_000011.png").exists() and (out / "samples_000005.png").exists()
    sheet = Image.open(out / "samples_000011.png")
    assert sheet.size == (5 * 96, 4 * 112)


def test_pixel_loss_on_every_fifth_generator_update(resumed_run):
    rows = read_metrics(resumed_run[0] / "metrics.csv")
    for r in rows:
        fifth = int(r["g_updates"]) % 5 == 0
        assert int(r["pixel_applied"]) == fifth
        assert (r["loss_pixel"] != "") == fifth
    assert sum(int(r["pixel_applied"]) for r in rows) == 2


def test_resume_is_exact(faces, resumed_run, tmp_path):
    """6 + 5 resumed steps give the same weights as 11 uninterrupted ones (same RNG draws, optimizer state)."""
    train(faces, tmp_path, "--config", "mrgan_tiny", "--steps", "11", "--ckpt-every", "100", "--sample-every", "100")
    straight = torch.load(tmp_path / "last.pt", map_location="cpu", weights_only=True)
    resumed = torch.load(resumed_run[0] / "last.pt", map_location="cpu", weights_only=True)
    for k, v in straight["generator"].items():
        torch.testing.assert_close(resumed["generator"][k], v, rtol=1e-5, atol=1e-6)


def test_max_minutes_stops_cleanly(faces, tmp_path):
    train(faces, tmp_path, "--config", "mrgan_tiny", "--steps", "1000", "--max-minutes", "0")
    ckpt = torch.load(tmp_path / "last.pt", map_location="cpu", weights_only=True)
    assert ckpt["step"] == 1
    assert list(tmp_path.glob("samples_*.png"))


@pytest.mark.parametrize("name", ABLATIONS)
def test_each_config_trains_one_step(faces, tmp_path, name):
    train(faces, tmp_path, "--config", name, "--steps", "1", "--batch-size", "2")
    ckpt = torch.load(tmp_path / "last.pt", map_location="cpu", weights_only=True)
    assert ckpt["step"] == 1 and ckpt["config"]["name"] == name
    row = read_metrics(tmp_path / "metrics.csv")[0]
    assert np.isfinite(float(row["loss_g"])) and np.isfinite(float(row["loss_d"]))


def test_real_batch_is_bucketed_around_the_sampled_height():
    native = np.array([18, 19, 25, 30, 31, 33, 50], dtype=np.int32)
    values, weights = height_distribution(native)
    pool = RealLRPool(native, values, tolerance=3)
    gen = torch.Generator().manual_seed(0)
    for _ in range(20):
        draw = sample_step(gen, 10, pool, torch.tensor(values), torch.tensor(weights, dtype=torch.float64), 8, 4)
        assert draw["height"] in values
        assert np.all(np.abs(native[draw["lr_index"].numpy()] - draw["height"]) <= 3)


def test_bottleneck_matches_the_pillow_canvas_path():
    """Fake LR faces must reach the canvas the way real captures do (to_lr_size, then to_canvas)."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:112, 0:96]
    img = np.clip(np.stack([xx * 2.5, yy * 2, 128 + 60 * np.sin(xx / 5.0)], -1) + rng.normal(0, 8, (112, 96, 3)), 0, 255).astype(np.uint8)
    x = torch.from_numpy(img).permute(2, 0, 1)[None].float() / 127.5 - 1
    for h in (18, 30, 56):
        ours = ((bottleneck(x, h)[0].permute(1, 2, 0) + 1) * 127.5).numpy()
        pillow = to_canvas(to_lr_size(img, h)).astype(np.float32)
        assert np.abs(ours - pillow).mean() < 1.5
