"""An ensemble of five adapted models sharing the frozen teacher (train_adapt.EnsembleMR), exported with the shipped
test-time options (`adapt_handmade_6k_lrview`'s: mirror averaging, the LR view at 32 px with weight 0.35, the gate
floor 0.3) and float16 weights. Members, in order: the shipped three (`adapt_ens3_lrview`: `adapt_handmade_flip_6k`,
`adapt_mix_flip_6k`, `adapt_handmade_flip_6k_s2`), then the two fresh-LR members `adapt_online_flip_6k` and
`adapt_online_flip_6k_s5`:

    lrface train-adapt --reexport lrface/models/weights/embedder.onnx runs/adapt_online_flip_6k/last.pt \\
        runs/adapt_online_flip_6k_s5/last.pt --config adapt_ens5_online_lrview --out M.onnx

(the shipped file's three members are read back from its graph). The rule it is judged by is in
`adapt_online_flip_6k`'s docstring."""
from dataclasses import replace

from lrface.training.configs.adapt_handmade_6k_lrview import config as base

config = replace(base, name="adapt_ens5_online_lrview", ensemble=5, fp16_weights=True,
                 verify_threshold=0.5155)  # HR-LR at FAR 1e-3 on dev, measured on this file (lrface eval)
