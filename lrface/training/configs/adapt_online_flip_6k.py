"""A member trained on fresh LR faces for the full budget: `adapt_online_flip_3k`'s recipe (member 1's,
`adapt_handmade_flip_6k`, with half of each batch's LR faces degraded afresh at every update, `lr_online` 0.5)
for member 1's 6,000 updates, seed 4. At 3,000 updates the fresh-LR member beat the fixed hand-made LR at the same
budget (the model card's "Reading it"); this run asks whether it still does at the full budget.

Rule for shipping, written down before the runs: this run and `adapt_online_flip_6k_s5` (the same recipe, seed 5)
train side by side (one thread each); `adapt_ens5_online_lrview` (the shipped three members + these two, the
shipped test-time options) replaces the shipped file only if HR-LR (TAR at FAR 1e-3) and LR rank-1 both rise on
both CRC-32 halves of the dev people (`lrface eval --people even|odd`) and HR-HR on all of dev stays at or above
90 %. No other combination is scored for shipping; the members alone and the four-member file are reported only."""
from dataclasses import replace

from lrface.training.configs.adapt_handmade_flip_6k import config as base

config = replace(base, name="adapt_online_flip_6k", steps=6000, lr_online=0.5, seed=4)
