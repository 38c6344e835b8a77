"""Ablation: the full model without feature supervision (margin loss and adversarial only)."""
from dataclasses import replace

from lrface.training.configs.adapt_full import config as base

config = replace(base, name="adapt_no_feature", feature_weight=0.0)
