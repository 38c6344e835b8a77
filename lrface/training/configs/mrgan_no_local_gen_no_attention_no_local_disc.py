"""Ablation (supplementary Table 1): global generator without attention, global discriminator only."""
from dataclasses import replace

from lrface.training.configs.mrgan_base import config as base

config = replace(base, name="mrgan_no_local_gen_no_attention_no_local_disc", use_local_generators=False,
                 use_attention=False, use_attention_loss=False, use_local_discriminators=False)
