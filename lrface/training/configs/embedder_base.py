"""Defaults for the face models (Model_HR, Model_LR, the HR + bicubic baseline); experiments override a few fields."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class EmbedderConfig:
    name: str = "embedder_base"
    # network (lrface.models.backbones.get_model)
    network: str = "mbf_small"
    embedding_dim: int = 128
    # margin head (lrface.training.losses.MarginHead). CosFace converges from scratch on ~3.6 images per identity
    # more reliably than ArcFace's s=64, m=0.5; embedder_arcface is that variant.
    margin: str = "cosface"
    scale: float = 32.0
    margin_m: float = 0.35
    # optimisation
    optimizer: str = "sgd"  # sgd | adamw
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    schedule: str = "cosine"  # cosine | step
    milestones: tuple[float, ...] = (0.6, 0.85)  # step schedule: fractions of training where lr drops 10x
    warmup_epochs: float = 1.0
    epochs: int = 24
    batch_size: int = 128
    # augmentation: horizontal flip always; --mode hr_bicubic replaces a fraction of each batch by a bicubic
    # down/up-sampled copy at a random LR height (the paper's "HR + bicubic" baseline)
    flip: bool = True
    bicubic_prob: float = 0.5
    bicubic_min_height: int = 16
    bicubic_max_height: int = 56
    # bookkeeping
    log_every: int = 20
    save_every_minutes: float = 10.0
    seed: int = 0
    # written into the exported sidecar until `lrface eval` measures the real one (FAR 1e-3 on HR-LR pairs)
    verify_threshold: float = 0.35


config = EmbedderConfig()
