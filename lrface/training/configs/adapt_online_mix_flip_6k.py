"""A member trained on fresh and mixed LR faces: member 2's recipe (`adapt_mix_flip_6k`: hand-made ½ / MR-GAN ¼ /
bicubic ¼ LR from the bundle, 6,000 updates, mirror averaging at export) with half of each batch's LR faces degraded
afresh at every update (`lr_online`, as in `adapt_online_flip_6k`); seed 4."""
from dataclasses import replace

from lrface.training.configs.adapt_mix_flip_6k import config as base

config = replace(base, name="adapt_online_mix_flip_6k", lr_online=0.5, seed=4)
