"""Ablation: the full model without the real LR captures of lr-train (MR-GAN pairs only)."""
from dataclasses import replace

from lrface.training.configs.adapt_full import config as base

config = replace(base, name="adapt_no_real", real_per_batch=0)
