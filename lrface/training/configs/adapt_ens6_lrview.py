"""`adapt_ens5_online_lrview` (the shipped five members, mirror averaging, the LR view, the gate floor, float16 weights)
with a sixth member, `adapt_handmade_flip_6k_s3`:

    lrface train-adapt --reexport lrface/models/weights/embedder.onnx runs/adapt_handmade_flip_6k_s3/last.pt \\
        --config adapt_ens6_lrview --out M.onnx

(the shipped file's five members are read back from its graph). The rule it is judged by is in
`adapt_handmade_flip_6k_s3`'s docstring."""
from dataclasses import replace

from lrface.training.configs.adapt_ens5_online_lrview import config as base

config = replace(base, name="adapt_ens6_lrview", ensemble=6)  # verify_threshold: the five-member file's until measured
