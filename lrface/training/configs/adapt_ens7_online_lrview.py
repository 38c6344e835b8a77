"""An ensemble of seven adapted models sharing the frozen teacher (train_adapt.EnsembleMR), exported with the shipped
test-time options (mirror averaging, the LR view at 32 px with weight 0.35, the gate floor 0.3) and float16 weights.
Members, in order: the five of `adapt_ens5_online_lrview`, then `adapt_online_flip_6k_s6` and
`adapt_online_flip_6k_s7`:

    lrface train-adapt --reexport lrface/models/weights/embedder.onnx runs/adapt_online_flip_6k_s6/last.pt \\
        runs/adapt_online_flip_6k_s7/last.pt --config adapt_ens7_online_lrview --out M.onnx

(the shipped file's five members are read back from its graph). The rule it is judged by is in
`adapt_online_flip_6k_s6`'s docstring."""
from dataclasses import replace

from lrface.training.configs.adapt_handmade_6k_lrview import config as base

config = replace(base, name="adapt_ens7_online_lrview", ensemble=7, fp16_weights=True,
                 verify_threshold=0.5155)  # the five-member file's value until this file is measured
