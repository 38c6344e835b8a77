"""A member trained on fresh LR faces for the full budget: `adapt_online_flip_3k`'s recipe (member 1's,
`adapt_handmade_flip_6k`, with half of each batch's LR faces degraded afresh at every update, `lr_online` 0.5)
for member 1's 6,000 updates, seed 4. At 3,000 updates the fresh-LR member beat the fixed hand-made LR at the same
budget (the model card's "Reading it"); this run asks whether it still does at the full budget.

Rule for shipping, written down before the run: `adapt_ens4_online6k_lrview` (the shipped three members + this one)
replaces the shipped file only if HR-LR (TAR at FAR 1e-3) and LR rank-1 both rise on both CRC-32 halves of the dev
people and HR-HR stays at or above 90 %; no other combination is scored for shipping."""
from dataclasses import replace

from lrface.training.configs.adapt_handmade_flip_6k import config as base

config = replace(base, name="adapt_online_flip_6k", steps=6000, lr_online=0.5, seed=4)
