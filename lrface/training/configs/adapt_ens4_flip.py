"""The 4 members of `adapt_ens4_lrview` with mirror averaging only (no LR view, no gate floor), weights stored as
float16: what the ensemble buys without the test-time values picked on dev."""
from dataclasses import replace

from lrface.training.configs.adapt_handmade_flip_6k import config as base

config = replace(base, name="adapt_ens4_flip", ensemble=4, fp16_weights=True,
                 verify_threshold=0.5)  # placeholder until `lrface eval` measures it (HR-LR at FAR 1e-3 on dev)
