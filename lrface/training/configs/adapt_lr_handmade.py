"""Ablation: Model_LR alone (no gate), trained on the hand-made degradations (blur, noise, JPEG)."""
from dataclasses import replace

from lrface.training.configs.adapt_full import config as base

config = replace(base, name="adapt_lr_handmade", gate=False, lr_kind="handmade", hr_fraction=0.0)
