"""Model_MR, the resolution adaption network's feature adaption part: an HR branch (Model_HR), an LR branch
(Model_LR) and a translation gate that fuses them.

    f_HR = HR(x),  f_LR = LR(x)                      two backbones on the same 112x96 face
    W    = sigmoid(D_LR(f_HR))                       D_LR: low-resolution feature discriminator, W in [0, 1]
    f    = f_HR + W * T(f_LR)                        T: translator, a residual MLP into the HR feature space

The fusion is additive rather than convex ((1 - W) f_HR + W T(f_LR)): an HR face (W ~ 0) keeps the HR
branch's feature exactly, so HR-HR matching is what Model_HR gives, and for an LR face the translated LR
representation amplifies the weak HR-branch feature instead of replacing it. W is read from the HR branch's
feature because that is what tells resolutions apart best: the HR model's features of LR faces are what
D_LR learns to recognise during training.
"""
from __future__ import annotations

import torch
from torch import nn


class Translator(nn.Module):
    """T: LR-branch feature -> HR feature space, f + MLP(f), so it starts near the identity."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.BatchNorm1d(hidden), nn.PReLU(hidden), nn.Linear(hidden, dim))

    def forward(self, f_lr: torch.Tensor) -> torch.Tensor:  # [N, D] -> [N, D]
        return f_lr + self.mlp(f_lr)


class LowResolutionDiscriminator(nn.Module):
    """D_LR: a face feature -> logit that the face was low-resolution.

    It sees the feature's direction (scaled to unit-size entries) and its log-norm separately: the norm is a
    strong resolution cue (LR faces give weaker features), and splitting it off keeps the logits sane whatever
    scale the backbone's features have.
    """

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(dim + 1, hidden), nn.LeakyReLU(0.2), nn.Linear(hidden, hidden),
                                 nn.LeakyReLU(0.2), nn.Linear(hidden, 1))
        self.unit_scale = float(dim) ** 0.5

    def forward(self, feature: torch.Tensor) -> torch.Tensor:  # [N, D] -> [N, 1]
        norm = feature.norm(dim=1, keepdim=True).clamp_min(1e-6)
        return self.net(torch.cat([feature / norm * self.unit_scale, torch.log(norm)], dim=1))


class TranslationGate(nn.Module):
    """f = f_HR + W * T(f_LR) with W = sigmoid(D_LR(f_HR))."""

    def __init__(self, dim: int, translator_hidden: int = 256, discriminator_hidden: int = 256):
        super().__init__()
        self.translator = Translator(dim, translator_hidden)
        self.discriminator = LowResolutionDiscriminator(dim, discriminator_hidden)

    def forward(self, f_hr: torch.Tensor, f_lr: torch.Tensor) -> dict[str, torch.Tensor]:
        w = torch.sigmoid(self.discriminator(f_hr))  # [N, 1]
        return {"w": w, "fused": f_hr + w * self.translator(f_lr)}


class ModelMR(nn.Module):
    """Both branches and the gate; `forward(face)` is the fused embedding [N, D] (not normalised)."""

    def __init__(self, hr_branch: nn.Module, lr_branch: nn.Module, dim: int, translator_hidden: int = 256,
                 discriminator_hidden: int = 256):
        super().__init__()
        self.hr_branch = hr_branch
        self.lr_branch = lr_branch
        self.gate = TranslationGate(dim, translator_hidden, discriminator_hidden)
        self.dim = dim

    def parts(self, face: torch.Tensor) -> dict[str, torch.Tensor]:
        """f_hr, f_lr, w and fused for a batch of faces."""
        f_hr, f_lr = self.hr_branch(face), self.lr_branch(face)
        return {"f_hr": f_hr, "f_lr": f_lr, **self.gate(f_hr, f_lr)}

    def forward(self, face: torch.Tensor) -> torch.Tensor:
        return self.parts(face)["fused"]
