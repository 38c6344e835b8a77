"""Backbones (shapes, factory), margin heads (ArcFace / CosFace logits) and feature losses."""
import math

import pytest

torch = pytest.importorskip("torch")

from lrface.models.backbones import MODELS, count_parameters, get_model  # noqa: E402
from lrface.training.losses import (ArcFace, CosFace, MarginHead, feature_loss, margin_loss)  # noqa: E402
from lrface.training.train_embedder import bicubic_degrade, learning_rate  # noqa: E402


pytestmark = [pytest.mark.torch, pytest.mark.usefixtures("one_torch_thread")]


@pytest.mark.parametrize("name, dim", [("mbf_tiny", 32), ("mbf_small", 128), ("mbf_fast", 128), ("iresnet18", 64)])
def test_backbone_maps_canvas_to_unnormalised_embedding(name, dim):
    torch.manual_seed(0)
    net = get_model(name, embedding_dim=dim)
    emb = net(torch.rand(2, 3, 112, 96) * 2 - 1)
    assert emb.shape == (2, dim)
    assert not torch.allclose(emb.norm(dim=1), torch.ones(2))
    emb.sum().backward()
    assert all(p.grad is not None for p in net.parameters())


def test_default_backbone_is_small_and_iresnet50_is_a_config_away():
    assert 0.1e6 < count_parameters(get_model("mbf_small")) < 1e6
    assert count_parameters(get_model("iresnet50")) > 20e6
    assert {"mbf_small", "mbf", "iresnet50", "iresnet100"} <= set(MODELS)
    with pytest.raises(ValueError, match="unknown backbone"):
        get_model("resnet9000")


def test_arcface_adds_angle_margin_to_target_class_only():
    torch.manual_seed(0)
    cosine = torch.rand(5, 7) * 1.6 - 0.8
    labels = torch.tensor([0, 3, 6, 2, 2])
    s, m = 30.0, 0.5
    logits = ArcFace(s, m)(cosine, labels)
    assert logits.shape == (5, 7)
    target = torch.zeros_like(cosine, dtype=torch.bool)
    target[torch.arange(5), labels] = True
    assert torch.allclose(logits[~target], s * cosine[~target])
    c = cosine[target]
    expected = torch.where(c > math.cos(math.pi - m), torch.cos(torch.acos(c) + m), c - math.sin(math.pi - m) * m)
    assert torch.allclose(logits[target], s * expected, atol=1e-5)
    assert (logits[target] < s * c).all()


def test_arcface_stays_monotonic_past_pi_minus_m():
    cosine = torch.tensor([[-0.99, 0.0]])
    logits = ArcFace(10.0, 0.5)(cosine, torch.tensor([0]))
    assert torch.isclose(logits[0, 0], torch.tensor(10.0 * (-0.99 - math.sin(math.pi - 0.5) * 0.5)))


def test_cosface_subtracts_margin_from_target_cosine_only():
    cosine = torch.tensor([[0.5, 0.2, -0.1], [0.3, 0.9, 0.0]])
    logits = CosFace(s=10.0, m=0.35)(cosine, torch.tensor([2, 1]))
    assert torch.allclose(logits, 10.0 * torch.tensor([[0.5, 0.2, -0.45], [0.3, 0.55, 0.0]]))


@pytest.mark.parametrize("kind", ["arcface", "cosface"])
def test_margin_head_logits_loss_and_accuracy(kind):
    torch.manual_seed(0)
    head = MarginHead(num_classes=10, dim=16, kind=kind, s=16.0, m=0.3)
    emb = torch.randn(6, 16, requires_grad=True)
    labels = torch.randint(0, 10, (6,))
    logits = head(emb, labels)
    assert logits.shape == (6, 10)
    plain = head.cosine_logits(emb)
    assert (logits.gather(1, labels[:, None]) < plain.gather(1, labels[:, None])).all()
    loss, acc = margin_loss(head, emb, labels)
    assert loss.ndim == 0 and 0.0 <= acc.item() <= 1.0
    loss.backward()
    assert emb.grad is not None and head.weight.grad is not None
    with pytest.raises(ValueError):
        MarginHead(3, 4, kind="sphereface")


def test_feature_loss_variants():
    a = torch.tensor([[3.0, 4.0], [1.0, 0.0]])
    b = torch.tensor([[0.0, 0.0], [0.0, 1.0]])
    assert feature_loss("l2", a, b).item() == pytest.approx((25.0 + 2.0) / 2)
    assert feature_loss("euclidean", a, b).item() == pytest.approx((5.0 + math.sqrt(2.0)) / 2, rel=1e-5)
    assert feature_loss("cosine", a, 2 * a).item() == pytest.approx(0.0, abs=1e-6)  # scale-free
    assert feature_loss("cosine", torch.tensor([[1.0, 0.0]]), torch.tensor([[-1.0, 0.0]])).item() == pytest.approx(2.0)
    for kind in ("l2", "cosine", "euclidean"):
        x = torch.randn(4, 8, requires_grad=True)
        assert feature_loss(kind, x, x.detach()).item() == pytest.approx(0.0, abs=1e-5)
        feature_loss(kind, x, torch.randn(4, 8)).backward()
        assert torch.isfinite(x.grad).all()
    with pytest.raises(ValueError):
        feature_loss("manhattan", a, b)


def test_bicubic_degrade_keeps_canvas_and_removes_detail():
    torch.manual_seed(0)
    x = torch.rand(4, 3, 112, 96) * 2 - 1
    out = bicubic_degrade(x, torch.tensor([16, 16, 30, 56]))
    assert out.shape == x.shape and out.min() >= -1 and out.max() <= 1
    assert out.std() < x.std()  # white noise averages out when the face is shrunk
    flat = torch.full((1, 3, 112, 96), 0.25)
    assert torch.allclose(bicubic_degrade(flat, torch.tensor([20])), flat, atol=1e-5)


def test_learning_rate_schedules():
    assert learning_rate(0.1, 0, 100, 10, "cosine", ()) == pytest.approx(0.01)
    assert learning_rate(0.1, 10, 100, 10, "cosine", ()) == pytest.approx(0.1)
    assert learning_rate(0.1, 100, 100, 10, "cosine", ()) == pytest.approx(0.0, abs=1e-12)
    assert learning_rate(0.1, 70, 100, 0, "step", (0.6, 0.85)) == pytest.approx(0.01)
