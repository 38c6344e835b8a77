"""`adapt_online_flip_6k` with seed 7: the second of the two further fresh-LR members, trained beside
`adapt_online_flip_6k_s6` (its docstring has the rule these two runs are judged by). Trained alone on 2026-12-08
(6,000 updates in 48.6 min, 0.49 s an update, on a 2-core Intel Xeon VM with two threads) and joined to the shipped
six as `adapt_ens7_online_lrview`, which failed that rule and was not shipped (its docstring has the numbers).
Alone, mirror only: HR-HR 90.2, HR-LR 21.5, LR-LR 13.8, rank-1 23.3 on dev, within noise of the other members."""
from dataclasses import replace

from lrface.training.configs.adapt_online_flip_6k import config as base

config = replace(base, name="adapt_online_flip_6k_s7", seed=7)
