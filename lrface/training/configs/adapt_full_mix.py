"""The full model with several kinds of LR training faces at once: each LR face of a batch is the hand-made
degradation (half of them), the MR-GAN's or a plain bicubic downscale of its source, so Model_LR sees three
different LR versions of every source instead of one."""
from dataclasses import replace

from lrface.training.configs.adapt_full import config as base

config = replace(base, name="adapt_full_mix", lr_kinds=("handmade", "mrgan", "bicubic"),
                 lr_kind_weights=(0.5, 0.25, 0.25))
