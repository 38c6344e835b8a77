"""The second member of the shipped ensemble (`adapt_ens6_online_lrview`; before it `adapt_ens5_online_lrview` and
`adapt_ens3_lrview`): the full model with mixed LR training faces
(`adapt_full_mix`: hand-made ½, MR-GAN ¼, bicubic ¼) for the shipped budget of 6,000 updates, with another seed
than the first member (`adapt_handmade_flip_6k`), so the two Model_LR copies make different errors; exported with
mirror averaging."""
from dataclasses import replace

from lrface.training.configs.adapt_full_mix import config as base

config = replace(base, name="adapt_mix_flip_6k", steps=6000, flip_average=True, seed=1)
