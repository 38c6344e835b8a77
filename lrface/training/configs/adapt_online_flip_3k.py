"""A member trained on fresh LR faces: member 1's recipe (`adapt_handmade_flip_6k`: the full model on hand-made LR,
mirror averaging at export) with half of each batch's LR faces degraded afresh at every update (`lr_online`: new
blur, noise, JPEG quality and height each time, the teacher embedding them on the fly), so Model_LR sees many LR
versions of a source instead of one; seed 3, and 3,000 updates (half member 1's: what a 3-hour CPU session with a
slower machine allowed)."""
from dataclasses import replace

from lrface.training.configs.adapt_handmade_flip_6k import config as base

config = replace(base, name="adapt_online_flip_3k", steps=3000, lr_online=0.5, seed=3)
