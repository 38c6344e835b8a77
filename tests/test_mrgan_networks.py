"""MR-GAN network parts: shapes, value ranges, the random vector and the noise, the in-graph resampler, the
sensor stage, local generators' reach, ablation switches."""
from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image

from lrface.core.face import FACE_HEIGHT, FACE_WIDTH, REGION_BY_NAME, REGIONS, lr_width_for_height
from lrface.models.mrgan import (LRGenerator, LocalGenerator, MRGANConfig, build_discriminators, build_generator,
                          count_parameters, resample_to_lr)
from lrface.training.configs import load_config
from lrface.training.gan_losses import attention_activation_loss


pytestmark = [pytest.mark.torch, pytest.mark.usefixtures("one_torch_thread")]


@pytest.fixture(scope="module")
def tiny() -> MRGANConfig:
    return load_config("mrgan_tiny")


def inputs(cfg: MRGANConfig, n: int = 3, height: float = 24.0, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    face = torch.rand(n, 3, FACE_HEIGHT, FACE_WIDTH, generator=g) * 2 - 1
    z = torch.randn(n, cfg.z_dim, generator=g)
    noise = torch.randn(n, 3, FACE_HEIGHT, FACE_WIDTH, generator=g)
    return face, z, torch.full((n, 1), height / FACE_HEIGHT), noise


@pytest.mark.parametrize("name", ["mrgan_tiny", "mrgan_base"])
def test_generator_returns_lr_canvas_attention_and_content(name):
    cfg = load_config(name)
    torch.manual_seed(0)
    with torch.no_grad():
        out = build_generator(cfg)(*inputs(cfg, n=2))
    for key in ("lr", "lr_optics", "canvas", "content"):
        assert out[key].shape == (2, 3, FACE_HEIGHT, FACE_WIDTH)
    assert out["attention"].shape == (2, 1, FACE_HEIGHT, FACE_WIDTH)
    assert out["canvas"].abs().max() <= 1.0
    a = out["attention"]
    assert a.min() >= 0 and a.max() <= 1 and 0 < a.mean() < 1


def test_output_blends_content_and_input_by_attention(tiny):
    cfg = replace(tiny, use_local_generators=False)
    face, z, scale, noise = inputs(cfg)
    with torch.no_grad():
        out = build_generator(cfg)(face, z, scale, noise)
    a, c = out["attention"], out["content"]
    torch.testing.assert_close(out["canvas"], a * c + (1 - a) * face)


def test_new_random_vector_gives_new_variant(tiny):
    torch.manual_seed(0)
    g = build_generator(tiny)
    face, z, scale, noise = inputs(tiny)
    with torch.no_grad():
        a = g(face, z, scale, noise)["lr"]
        b = g(face, torch.randn_like(z), scale, noise)["lr"]
        again = g(face, z, scale, noise)["lr"]
    assert (a - b).abs().amax(dim=(1, 2, 3)).min() > 1e-4  # every sample changes
    torch.testing.assert_close(a, again)  # the same z gives the same face


def test_target_scale_conditions_the_output(tiny):
    g = build_generator(tiny)
    face, z, _, noise = inputs(tiny)
    with torch.no_grad():
        low = g(face, z, torch.full((3, 1), 18 / 112), noise)["canvas"]
        high = g(face, z, torch.full((3, 1), 56 / 112), noise)["canvas"]
    assert (low - high).abs().max() > 1e-4


def test_global_generator_random_vector_varies_whole_face(tiny):
    g = build_generator(replace(tiny, use_local_generators=False))
    face, z, scale, noise = inputs(tiny)
    with torch.no_grad():
        diff = (g(face, z, scale, noise)["canvas"] - g(face, -z, scale, noise)["canvas"]).abs()
    top = diff[:, :, :20].amax()  # the forehead is outside every local region
    assert top > 1e-5


@pytest.mark.parametrize("region", REGIONS, ids=lambda r: r.name)
def test_local_generator_residual_has_region_size_and_starts_at_zero(tiny, region):
    face, z, scale, _ = inputs(tiny)
    with torch.no_grad():
        patch = LocalGenerator(region, tiny)(face, z, scale)
    assert patch.shape == (3, 3, region.height, region.width)
    assert torch.all(patch == 0)  # zero-initialised residual: an untrained part leaves the global output alone


@pytest.mark.parametrize("name", ["eyes", "nose", "mouth"])
def test_local_generator_changes_only_its_region(tiny, name):
    torch.manual_seed(0)
    g = build_generator(tiny)
    face, z, scale, noise = inputs(tiny)
    with torch.no_grad():
        before = g(face, z, scale, noise)["canvas"]
        for p in g.local_generators[name].parameters():
            p.add_(torch.randn_like(p) * 0.5)
        after = g(face, z, scale, noise)["canvas"]
    changed = (before - after).abs().amax(dim=(0, 1)) > 0
    region = REGION_BY_NAME[name]
    inside = torch.zeros_like(changed)
    inside[region.slices] = True
    assert changed.any()
    assert not changed[~inside].any()


def test_discriminators_give_patch_logits(tiny):
    for cfg in (tiny, load_config("mrgan_base")):
        d = build_discriminators(cfg)
        logits = d(torch.zeros(2, 3, FACE_HEIGHT, FACE_WIDTH))
        assert set(logits) == {"global", "eyes", "nose", "mouth"}
        for v in logits.values():
            assert v.ndim == 4 and v.shape[:2] == (2, 1) and v.shape[2] > 1 and v.shape[3] > 1
    assert len(build_discriminators(tiny).local_discriminators["eyes"].net) == 6  # three conv layers
    assert set(build_discriminators(replace(tiny, use_local_discriminators=False))(torch.zeros(1, 3, 112, 96))) == {"global"}


def test_without_attention_the_output_is_the_content(tiny):
    cfg = replace(tiny, use_attention=False, use_local_generators=False)
    with torch.no_grad():
        out = build_generator(cfg)(*inputs(cfg))
    torch.testing.assert_close(out["canvas"], out["content"])
    assert torch.all(out["attention"] == 1)


def test_without_local_generators_there_are_none(tiny):
    assert len(build_generator(replace(tiny, use_local_generators=False)).local_generators) == 0
    assert set(build_generator(tiny).local_generators) == {"eyes", "nose", "mouth"}


def test_attention_activation_loss_is_mean_attention():
    a = torch.tensor([0.0, 0.5, 1.0, 0.5]).view(1, 1, 2, 2)
    assert attention_activation_loss(a).item() == pytest.approx(0.5)


def test_export_wrapper_returns_lr_in_range(tiny):
    face, z, scale, noise = inputs(tiny)
    with torch.no_grad():
        out = LRGenerator(build_generator(tiny))(face * 3, z, scale, noise * 10)
    assert out.shape == (3, 3, FACE_HEIGHT, FACE_WIDTH) and out.abs().max() <= 1


@pytest.mark.parametrize("height", [8, 18, 25, 37, 56, 111, 112])
def test_resampler_reduces_like_pillow_and_edge_pads(height):
    rng = np.random.default_rng(height)  # a face-like image: gradients, edges and sensor-like noise
    yy, xx = np.mgrid[0:FACE_HEIGHT, 0:FACE_WIDTH]
    rgb = np.clip(np.stack([xx * 2.5, yy * 2, 128 + 60 * np.sin(xx / 5.0)], -1) + rng.normal(0, 12, (FACE_HEIGHT, FACE_WIDTH, 3)),
                  0, 255).astype(np.uint8)
    width = lr_width_for_height(height)
    pillow = np.asarray(Image.fromarray(rgb).resize((width, height), Image.BICUBIC), dtype=np.float64)
    x = torch.from_numpy(rgb).permute(2, 0, 1)[None].float()
    ours = resample_to_lr(x, torch.tensor([[height / FACE_HEIGHT]]))[0].permute(1, 2, 0).double().numpy()
    # the filter is the same; Pillow rounds and clips to 8 bits after each of its two passes
    assert np.abs(ours[:height, :width].clip(0, 255) - pillow).mean() < 0.5
    assert np.abs(ours[:height, :width].clip(0, 255) - pillow).max() < 4
    assert np.array_equal(ours[height:], np.broadcast_to(ours[height - 1:height], ours[height:].shape))
    assert np.array_equal(ours[:, width:], np.broadcast_to(ours[:, width - 1:width], ours[:, width:].shape))


def test_resampler_gives_each_item_its_own_height():
    x = torch.rand(3, 3, FACE_HEIGHT, FACE_WIDTH)
    heights = [18, 33, 56]
    together = resample_to_lr(x, torch.tensor([[h / FACE_HEIGHT] for h in heights]))
    for i, h in enumerate(heights):
        alone = resample_to_lr(x[i:i + 1], torch.tensor([[h / FACE_HEIGHT]]))
        torch.testing.assert_close(together[i:i + 1], alone)


def test_sensor_stage_starts_as_identity_and_noise_then_matters(tiny):
    torch.manual_seed(0)
    g = build_generator(tiny)
    face, z, scale, noise = inputs(tiny)
    with torch.no_grad():
        out = g(face, z, scale, noise)
        torch.testing.assert_close(out["lr"], out["lr_optics"])  # colour transform and residual start at zero
        for p in g.sensor.parameters():
            p.add_(torch.randn_like(p) * 0.1)
        a = g(face, z, scale, noise)["lr"]
        b = g(face, z, scale, torch.randn_like(noise))["lr"]
    assert (a - b).abs().amax(dim=(1, 2, 3)).min() > 1e-4  # new per-pixel noise, new variant


def test_without_sensor_stage_the_output_is_the_resampled_canvas(tiny):
    cfg = replace(tiny, use_sensor_stage=False)
    face, z, scale, _ = inputs(cfg)
    with torch.no_grad():
        out = build_generator(cfg)(face, z, scale)
    torch.testing.assert_close(out["lr"], resample_to_lr(out["canvas"], scale))


def test_default_model_is_small():
    cfg = load_config("mrgan_base")
    assert count_parameters(build_generator(cfg)) < 2_000_000
    assert count_parameters(build_discriminators(cfg)) < 2_000_000
