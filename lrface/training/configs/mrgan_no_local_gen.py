"""Ablation (supplementary Table 1): without the local (eyes / nose / mouth) generators."""
from dataclasses import replace

from lrface.training.configs.mrgan_base import config as base

config = replace(base, name="mrgan_no_local_gen", use_local_generators=False)
