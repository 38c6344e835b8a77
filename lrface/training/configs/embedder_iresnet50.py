"""GPU-sized model: IResNet-50, 512-d embedding, ArcFace."""
from dataclasses import replace

from lrface.training.configs.embedder_base import config as base

config = replace(base, name="embedder_iresnet50", network="iresnet50", embedding_dim=512, margin="arcface",
                 scale=64.0, margin_m=0.5, batch_size=256, epochs=30, warmup_epochs=2.0)
