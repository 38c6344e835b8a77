"""`adapt_online_flip_6k` with seed 5: the second fresh-LR member trained beside it (its docstring has the rule
these two runs are judged by)."""
from dataclasses import replace

from lrface.training.configs.adapt_online_flip_6k import config as base

config = replace(base, name="adapt_online_flip_6k_s5", seed=5)
