"""Ablation (supplementary Table 1): without the attention activation loss."""
from dataclasses import replace

from lrface.training.configs.mrgan_base import config as base

config = replace(base, name="mrgan_no_attn_loss", use_attention_loss=False)
