"""The full model (gate, feature supervision, unlabeled-hr, real captures) with the hand-made degradations
(blur + noise + JPEG, lrface/training/degradations.py) as its LR training faces instead of the MR-GAN's."""
from dataclasses import replace

from lrface.training.configs.adapt_full import config as base

config = replace(base, name="adapt_full_handmade", lr_kind="handmade")
