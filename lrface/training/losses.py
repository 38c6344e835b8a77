"""Losses for the face models: margin heads (ArcFace, CosFace) side by side, and feature losses (L2 / cosine /
Euclidean) for the feature supervision of the adaption network (the paper's Table 1 variants).

A margin head owns the class-centre matrix W [C, D]; its logits are s * cos(theta) with the margin applied to
the target class only. `MarginHead.forward(embeddings, labels)` returns those logits, so the classification
loss is plain cross-entropy and accuracy can be read off the same tensor (`cosine_logits` gives the margin-free
version for monitoring).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class ArcFace(nn.Module):
    """Additive angular margin: the target logit becomes s * cos(theta + m)."""

    def __init__(self, s: float = 64.0, m: float = 0.5):
        super().__init__()
        self.s, self.m = s, m
        # Past theta = pi - m, cos(theta + m) stops decreasing; fall back to CosFace-like cos - m*sin(m) there
        # so the target logit stays monotonic in theta (as in the ArcFace paper's reference code).
        self.threshold = math.cos(math.pi - m)
        self.fallback = math.sin(math.pi - m) * m

    def forward(self, cosine: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        target = cosine.gather(1, labels[:, None])
        sine = torch.sqrt((1.0 - target * target).clamp_min(1e-9))
        with_margin = target * math.cos(self.m) - sine * math.sin(self.m)
        with_margin = torch.where(target > self.threshold, with_margin, target - self.fallback)
        return self.s * cosine.scatter(1, labels[:, None], with_margin)


class CosFace(nn.Module):
    """Additive cosine margin: the target logit becomes s * (cos(theta) - m)."""

    def __init__(self, s: float = 64.0, m: float = 0.35):
        super().__init__()
        self.s, self.m = s, m

    def forward(self, cosine: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        target = cosine.gather(1, labels[:, None])
        return self.s * cosine.scatter(1, labels[:, None], target - self.m)


MARGINS = {"arcface": ArcFace, "cosface": CosFace}


class MarginHead(nn.Module):
    """Normalised class centres + a margin: embeddings [N, D], labels [N] -> logits [N, C]."""

    def __init__(self, num_classes: int, dim: int, kind: str = "arcface", s: float = 64.0, m: float = 0.5):
        super().__init__()
        if kind not in MARGINS:
            raise ValueError(f"unknown margin {kind!r}; choose one of {', '.join(MARGINS)}")
        self.kind = kind
        self.weight = nn.Parameter(torch.randn(num_classes, dim) * 0.01)
        self.margin = MARGINS[kind](s=s, m=m)

    def cosine(self, embeddings: torch.Tensor) -> torch.Tensor:
        # Always in float32: under bf16 autocast a cosine near 1 loses the margin entirely.
        return F.linear(F.normalize(embeddings.float(), dim=1), F.normalize(self.weight.float(), dim=1)).clamp(-1, 1)

    def cosine_logits(self, embeddings: torch.Tensor) -> torch.Tensor:
        """Margin-free logits s * cos(theta), for accuracy and inference-time identification."""
        return self.margin.s * self.cosine(embeddings)

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return self.margin(self.cosine(embeddings), labels)


def margin_loss(head: MarginHead, embeddings: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Cross-entropy on the margin logits, and the batch accuracy (argmax of the margin-free cosines)."""
    cosine = head.cosine(embeddings)
    loss = F.cross_entropy(head.margin(cosine, labels), labels)
    accuracy = (cosine.argmax(1) == labels).float().mean()
    return loss, accuracy


# ------------------------------------------------------------------------------------------- feature losses
def l2_loss(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Squared Euclidean distance, mean over the batch (the classic "L2 loss" between features)."""
    return (a - b).pow(2).sum(1).mean()


def cosine_loss(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """1 - cos(a, b), mean over the batch: matches directions, which is what cosine verification scores."""
    return (1.0 - F.cosine_similarity(a, b, dim=1, eps=1e-8)).mean()


def euclidean_loss(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Euclidean distance ||a - b|| (not squared), mean over the batch: gradients of constant size."""
    return torch.sqrt((a - b).pow(2).sum(1) + 1e-12).mean()


FEATURE_LOSSES = {"l2": l2_loss, "cosine": cosine_loss, "euclidean": euclidean_loss}


def feature_loss(kind: str, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    if kind not in FEATURE_LOSSES:
        raise ValueError(f"unknown feature loss {kind!r}; choose one of {', '.join(FEATURE_LOSSES)}")
    return FEATURE_LOSSES[kind](a.float(), b.float())
