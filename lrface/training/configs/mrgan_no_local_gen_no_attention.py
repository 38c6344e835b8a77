"""Ablation (supplementary Table 1): without local generators and without spatial attention."""
from dataclasses import replace

from lrface.training.configs.mrgan_base import config as base

config = replace(base, name="mrgan_no_local_gen_no_attention", use_local_generators=False,
                 use_attention=False, use_attention_loss=False)
