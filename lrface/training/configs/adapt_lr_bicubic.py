"""Ablation: Model_LR alone (no gate), trained on bicubic LR faces."""
from dataclasses import replace

from lrface.training.configs.adapt_full import config as base

config = replace(base, name="adapt_lr_bicubic", gate=False, lr_kind="bicubic", hr_fraction=0.0)
