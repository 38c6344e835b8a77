"""Ablation (supplementary Table 1): without the spatial attention (the generator outputs its content image)."""
from dataclasses import replace

from lrface.training.configs.mrgan_base import config as base

config = replace(base, name="mrgan_no_attention", use_attention=False, use_attention_loss=False)
