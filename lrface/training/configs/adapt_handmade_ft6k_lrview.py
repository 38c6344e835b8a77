"""An experiment (not shipped: it scored lower on dev, see the model card's table): the shipped weights trained on,
`adapt_handmade_6k_lrview`'s Model_LR and gate fine-tuned for 6,000 more
updates (a second cosine cycle from lr 1e-4; margin heads and optimisers fresh, no D_LR warm-up), exported with the
same test-time options (LR view 32 px at 0.35, gate floor 0.3, mirror averaging; not re-picked):

    lrface train-adapt --config adapt_handmade_ft6k_lrview --init-from lrface/models/weights/embedder.onnx \
        --data runs/adapt-data --out runs/adapt_handmade_ft6k_lrview --threads 2
"""
from dataclasses import replace

from lrface.training.configs.adapt_handmade_6k_lrview import config as base

config = replace(base, name="adapt_handmade_ft6k_lrview", steps=6000)
