"""`adapt_online_flip_6k` (members 4 and 5's recipe) with seed 6: one more fresh-LR member.

It was first planned beside `adapt_online_flip_6k_s7` (one thread each) for a seven-member file,
`adapt_ens7_online_lrview`, with the rule below. Before either run started (2026-12-08) the plan changed: one
session's CPU time fits one member at two threads (0.72 s an update measured on a 40-update probe, so about 72
minutes for 6,000), so this member trains alone and joins the shipped five as `adapt_ens6_online_lrview`, judged by
the rule in that config's docstring (it held: shipped). The seven-member rule below was applied when `_s7` was
trained in the next session (2026-12-08): it failed, so the six-member file stays.

Rule for shipping the seven-member file, written down before the runs: `adapt_ens7_online_lrview` (the shipped five
members + these two, the shipped test-time options) replaces the shipped file only if HR-LR (TAR at FAR 1e-3) and LR
rank-1 both rise on both CRC-32 halves of the dev people (`lrface eval --people even|odd`), HR-HR on all of dev stays
at or above 90 %, and the file stays under 100 MB. No other combination is scored for shipping; the members alone
are reported only."""
from dataclasses import replace

from lrface.training.configs.adapt_online_flip_6k import config as base

config = replace(base, name="adapt_online_flip_6k_s6", seed=6)
