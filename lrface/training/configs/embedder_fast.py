"""mbf_fast: the default's size at ~40% of its CPU time (stride-4 stem, ReLU)."""
from dataclasses import replace

from lrface.training.configs.embedder_base import config as base

config = replace(base, name="embedder_fast", network="mbf_fast")
