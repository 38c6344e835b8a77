"""A minute-sized MR-GAN for tests and smoke runs: every part present, narrow layers."""
from dataclasses import replace

from lrface.training.configs.mrgan_base import config as base

config = replace(base, name="mrgan_tiny", width=4, fusion_stages=1, noise_channels=2, z_dim=8, local_width=4,
                 local_res_blocks=1, sensor_width=4, sensor_blocks=1, disc_width=8, disc_layers=2, local_disc_width=8, batch_size=4, steps=10,
                 ckpt_every=5, sample_every=5, log_every=1)
