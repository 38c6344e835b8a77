from dataclasses import replace

from lrface.training.configs.adapt_full_handmade import config as base

# the shipped recipe with a longer budget (3,000 updates instead of the ablation table's 1,000)
config = replace(base, name="adapt_full_handmade_long", steps=3000)
