"""Ablation: no feature supervision (probabilistic supervision and the gate only)."""
from dataclasses import replace

from lrface.training.configs.ran_base import config as base

config = replace(base, name="ran_no_feature", feature_every=0)
