"""Ablation: Model_LR alone (no gate), trained on MR-GAN LR faces."""
from dataclasses import replace

from lrface.training.configs.adapt_full import config as base

config = replace(base, name="adapt_lr_mrgan", gate=False, lr_kind="mrgan", hr_fraction=0.0)
