"""`adapt_online_flip_6k` (members 4 and 5's recipe) with seed 6: the first of two more fresh-LR members, trained
side by side with `adapt_online_flip_6k_s7` (one thread each).

Rule for shipping, written down before the runs: `adapt_ens7_online_lrview` (the shipped five members + these two,
the shipped test-time options) replaces the shipped file only if HR-LR (TAR at FAR 1e-3) and LR rank-1 both rise on
both CRC-32 halves of the dev people (`lrface eval --people even|odd`), HR-HR on all of dev stays at or above 90 %,
and the file stays under 100 MB. No other combination is scored for shipping; the members alone are reported
only."""
from dataclasses import replace

from lrface.training.configs.adapt_online_flip_6k import config as base

config = replace(base, name="adapt_online_flip_6k_s6", seed=6)
