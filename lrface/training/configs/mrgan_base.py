"""MR-GAN, the full model: multi-resolution global generator with spatial attention, local generators and discriminators."""
from lrface.models.mrgan import MRGANConfig

config = MRGANConfig(name="mrgan_base")
