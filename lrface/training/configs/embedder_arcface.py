"""The default network with ArcFace (s=64, m=0.5) instead of CosFace."""
from dataclasses import replace

from lrface.training.configs.embedder_base import config as base

config = replace(base, name="embedder_arcface", margin="arcface", scale=64.0, margin_m=0.5)
