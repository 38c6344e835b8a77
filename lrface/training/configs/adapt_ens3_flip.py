"""The previously shipped ensemble's three members (`adapt_ens3_lrview`) with mirror averaging only (no LR view, no gate
floor): what the ensemble buys without the test-time values picked on dev."""
from dataclasses import replace

from lrface.training.configs.adapt_handmade_flip_6k import config as base

config = replace(base, name="adapt_ens3_flip", ensemble=3,
                 verify_threshold=0.5057)  # HR-LR at FAR 1e-3 on dev, measured by `lrface eval` on the export
