"""Member 3 of the shipped ensemble (`adapt_ens6_online_lrview`; before it `adapt_ens5_online_lrview` and
`adapt_ens3_lrview`): `adapt_handmade_flip_6k` (hand-made LR, 6,000 updates, mirror
averaging) with seed 2 instead of 0: other batches, other initial gate and margin heads."""
from dataclasses import replace

from lrface.training.configs.adapt_handmade_flip_6k import config as base

config = replace(base, name="adapt_handmade_flip_6k_s2", seed=2)
