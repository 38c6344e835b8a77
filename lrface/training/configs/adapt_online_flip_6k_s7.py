"""`adapt_online_flip_6k` with seed 7: the second of the two further fresh-LR members, trained beside
`adapt_online_flip_6k_s6` (its docstring has the rule these two runs are judged by)."""
from dataclasses import replace

from lrface.training.configs.adapt_online_flip_6k import config as base

config = replace(base, name="adapt_online_flip_6k_s7", seed=7)
