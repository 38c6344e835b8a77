"""MR-GAN network parts: shapes, value ranges, the random vector, local generators' reach, ablation switches."""
from dataclasses import replace

import pytest
import torch

from models.face import FACE_HEIGHT, FACE_WIDTH, REGION_BY_NAME, REGIONS
from models.mrgan import (LRCanvasGenerator, LocalGenerator, MRGANConfig, build_discriminators, build_generator,
                          count_parameters)
from training.configs import load_config
from training.gan_losses import attention_activation_loss


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def tiny() -> MRGANConfig:
    return load_config("mrgan_tiny")


def inputs(cfg: MRGANConfig, n: int = 3, height: float = 24.0, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    face = torch.rand(n, 3, FACE_HEIGHT, FACE_WIDTH, generator=g) * 2 - 1
    z = torch.randn(n, cfg.z_dim, generator=g)
    return face, z, torch.full((n, 1), height / FACE_HEIGHT)


@pytest.mark.parametrize("name", ["mrgan_tiny", "mrgan_base"])
def test_generator_returns_canvas_attention_and_content(name):
    cfg = load_config(name)
    torch.manual_seed(0)
    with torch.no_grad():
        out = build_generator(cfg)(*inputs(cfg, n=2))
    assert out["lr_canvas"].shape == (2, 3, FACE_HEIGHT, FACE_WIDTH)
    assert out["content"].shape == (2, 3, FACE_HEIGHT, FACE_WIDTH)
    assert out["attention"].shape == (2, 1, FACE_HEIGHT, FACE_WIDTH)
    assert out["lr_canvas"].abs().max() <= 1.0
    a = out["attention"]
    assert a.min() >= 0 and a.max() <= 1 and 0 < a.mean() < 1


def test_output_blends_content_and_input_by_attention(tiny):
    cfg = replace(tiny, use_local_generators=False)
    face, z, scale = inputs(cfg)
    with torch.no_grad():
        out = build_generator(cfg)(face, z, scale)
    a, c = out["attention"], out["content"]
    torch.testing.assert_close(out["lr_canvas"], a * c + (1 - a) * face)


def test_new_random_vector_gives_new_variant(tiny):
    torch.manual_seed(0)
    g = build_generator(tiny)
    face, z, scale = inputs(tiny)
    with torch.no_grad():
        a = g(face, z, scale)["lr_canvas"]
        b = g(face, torch.randn_like(z), scale)["lr_canvas"]
        again = g(face, z, scale)["lr_canvas"]
    assert (a - b).abs().amax(dim=(1, 2, 3)).min() > 1e-4  # every sample changes
    torch.testing.assert_close(a, again)  # the same z gives the same face


def test_target_scale_conditions_the_output(tiny):
    g = build_generator(tiny)
    face, z, _ = inputs(tiny)
    with torch.no_grad():
        low = g(face, z, torch.full((3, 1), 18 / 112))["lr_canvas"]
        high = g(face, z, torch.full((3, 1), 56 / 112))["lr_canvas"]
    assert (low - high).abs().max() > 1e-4


def test_global_generator_random_vector_varies_whole_face(tiny):
    g = build_generator(replace(tiny, use_local_generators=False))
    face, z, scale = inputs(tiny)
    with torch.no_grad():
        diff = (g(face, z, scale)["lr_canvas"] - g(face, -z, scale)["lr_canvas"]).abs()
    top = diff[:, :, :20].amax()  # the forehead is outside every local region
    assert top > 1e-5


@pytest.mark.parametrize("region", REGIONS, ids=lambda r: r.name)
def test_local_generator_residual_has_region_size_and_starts_at_zero(tiny, region):
    face, z, scale = inputs(tiny)
    with torch.no_grad():
        patch = LocalGenerator(region, tiny)(face, z, scale)
    assert patch.shape == (3, 3, region.height, region.width)
    assert torch.all(patch == 0)  # zero-initialised residual: an untrained part leaves the global output alone


@pytest.mark.parametrize("name", ["eyes", "nose", "mouth"])
def test_local_generator_changes_only_its_region(tiny, name):
    torch.manual_seed(0)
    g = build_generator(tiny)
    face, z, scale = inputs(tiny)
    with torch.no_grad():
        before = g(face, z, scale)["lr_canvas"]
        for p in g.local_generators[name].parameters():
            p.add_(torch.randn_like(p) * 0.5)
        after = g(face, z, scale)["lr_canvas"]
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
    torch.testing.assert_close(out["lr_canvas"], out["content"])
    assert torch.all(out["attention"] == 1)


def test_without_local_generators_there_are_none(tiny):
    assert len(build_generator(replace(tiny, use_local_generators=False)).local_generators) == 0
    assert set(build_generator(tiny).local_generators) == {"eyes", "nose", "mouth"}


def test_attention_activation_loss_is_mean_attention():
    a = torch.tensor([0.0, 0.5, 1.0, 0.5]).view(1, 1, 2, 2)
    assert attention_activation_loss(a).item() == pytest.approx(0.5)


def test_export_wrapper_returns_canvas_in_range(tiny):
    face, z, scale = inputs(tiny)
    with torch.no_grad():
        out = LRCanvasGenerator(build_generator(tiny))(face * 3, z, scale)
    assert out.shape == (3, 3, FACE_HEIGHT, FACE_WIDTH) and out.abs().max() <= 1


def test_default_model_is_small():
    cfg = load_config("mrgan_base")
    assert count_parameters(build_generator(cfg)) < 2_000_000
    assert count_parameters(build_discriminators(cfg)) < 2_000_000
