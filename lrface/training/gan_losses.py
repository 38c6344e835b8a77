"""MR-GAN losses: least-squares adversarial terms, the pixel loss, the attention activation loss, a low-frequency loss."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def lsgan_discriminator_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """LSGAN: real patches towards 1, generated patches towards 0."""
    return 0.5 * ((real_logits.float() - 1).pow(2).mean() + fake_logits.float().pow(2).mean())


def lsgan_generator_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    """LSGAN: the generator wants its patches judged real (1)."""
    return (fake_logits.float() - 1).pow(2).mean()


def pixel_loss(fake: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """L1 between the generated LR canvas and the HR input taken through the same bottleneck (keeps identity)."""
    return F.l1_loss(fake.float(), target.float())


def attention_activation_loss(attention: torch.Tensor) -> torch.Tensor:
    """Mean of the attention map (an L1 penalty, A >= 0): without it A saturates at 1 and the input is ignored."""
    return attention.float().mean()


def low_frequency_loss(fake: torch.Tensor, target: torch.Tensor, factor: int = 8) -> torch.Tensor:
    """L1 between heavily average-pooled images: colour and layout must stay, detail is free to change."""
    return F.l1_loss(F.avg_pool2d(fake.float(), factor), F.avg_pool2d(target.float(), factor))
