"""Tests: a few-thousand-parameter network, small batches, log every step."""
from dataclasses import replace

from lrface.training.configs.embedder_base import config as base

config = replace(base, name="embedder_tiny", network="mbf_tiny", embedding_dim=32, batch_size=8, epochs=1,
                 warmup_epochs=0.0, lr=0.05, log_every=1, save_every_minutes=0.0)
