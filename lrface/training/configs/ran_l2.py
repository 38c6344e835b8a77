"""Table 1 variant: feature supervision with the L2 (squared Euclidean) loss."""
from dataclasses import replace

from lrface.training.configs.ran_base import config as base

config = replace(base, name="ran_l2", feature_loss="l2", feature_weight=0.01)
