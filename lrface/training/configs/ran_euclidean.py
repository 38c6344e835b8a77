"""Table 1 variant: feature supervision with the (unsquared) Euclidean distance."""
from dataclasses import replace

from lrface.training.configs.ran_base import config as base

config = replace(base, name="ran_euclidean", feature_loss="euclidean", feature_weight=0.1)
