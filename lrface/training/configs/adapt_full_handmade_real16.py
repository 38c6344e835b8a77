"""The full model on hand-made LR with twice the real captures per update (16 lr-train captures, margin-loss
weight 1.0 instead of 8 and 0.5): more of the target domain itself."""
from dataclasses import replace

from lrface.training.configs.adapt_full_handmade import config as base

config = replace(base, name="adapt_full_handmade_real16", real_per_batch=16, real_weight=1.0)
