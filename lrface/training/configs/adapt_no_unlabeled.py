"""Ablation: the full model without the unlabeled-hr faces."""
from dataclasses import replace

from lrface.training.configs.adapt_full import config as base

config = replace(base, name="adapt_no_unlabeled", use_unlabeled=False)
