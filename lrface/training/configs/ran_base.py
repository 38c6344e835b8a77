"""Feature adaption network (Algorithm 2), the paper's full model: translation gate, probabilistic supervision
(margin classification of fused HR and LR features), feature supervision with the cosine loss on every 4th
update, adversarial low-resolution feature discriminator. Experiments override a few fields."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class RANConfig:
    name: str = "ran_base"
    # translation gate (lrface.models.ran)
    translator_hidden: int = 256
    discriminator_hidden: int = 256
    freeze_hr_branch: bool = True  # keeps Model_HR (and HR-HR accuracy) exactly; the target of feature supervision
    # probabilistic supervision: margin head on the fused feature, for HR and LR inputs
    margin: str = "cosface"
    scale: float = 32.0
    margin_m: float = 0.35
    lr_cls_weight: float = 1.0
    # feature supervision: MR feature of the LR face -> HR-branch feature of its HR face, every `feature_every`-th
    # update and not otherwise (0 = never). Weights bring the three losses to a similar size at the start
    # (cosine ~0.5, L2 ~50 and Euclidean ~7 between 128-d features of norm ~11).
    feature_loss: str = "cosine"  # cosine | l2 | euclidean
    feature_weight: float = 1.0
    feature_every: int = 4
    # adversarial: D_LR tells LR-input features (1) from HR-input features (0); the MR feature of an LR face is
    # pushed towards "HR"
    adv_weight: float = 0.1
    d_lr: float = 2e-4
    # LR inputs: an MR-GAN-synthesized variant of the HR face, or (this fraction, and always when the face has no
    # synthesized variant) an on-the-fly bicubic down/up-sampled copy at a random height
    bicubic_fraction: float = 0.25
    bicubic_min_height: int = 16
    bicubic_max_height: int = 56
    # optimisation (LR branch, translator, head; the HR branch too when not frozen)
    optimizer: str = "sgd"
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-4
    schedule: str = "cosine"
    milestones: tuple[float, ...] = (0.6, 0.85)
    warmup_epochs: float = 0.0
    epochs: int = 20
    batch_size: int = 64  # HR/LR pairs per step (2x this many faces)
    flip: bool = True
    log_every: int = 20
    save_every_minutes: float = 10.0
    seed: int = 0
    verify_threshold: float = 0.35  # exported sidecar placeholder until `lrface eval` measures it


config = RANConfig()
