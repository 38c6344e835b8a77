"""Tests: small gate, small batches, log every step."""
from dataclasses import replace

from lrface.training.configs.ran_base import config as base

config = replace(base, name="ran_tiny", translator_hidden=16, discriminator_hidden=16, batch_size=4, epochs=2,
                 log_every=1, save_every_minutes=0.0)
