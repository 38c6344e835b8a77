"""`adapt_ens5_online_lrview` (the shipped five members and test-time options, float16 weights) with two more fresh-LR
members, `adapt_online_flip_6k_s6` and `adapt_online_flip_6k_s7`:

    lrface train-adapt --reexport lrface/models/weights/embedder.onnx runs/adapt_online_flip_6k_s7/last.pt \\
        --config adapt_ens7_online_lrview --out M.onnx

(the shipped file, `adapt_ens6_online_lrview` since 2026-12-08, holds the five members and `_s6`; they are read back
from its graph). The rule it is judged by is in
`adapt_online_flip_6k_s6`'s docstring."""
from dataclasses import replace

from lrface.training.configs.adapt_ens5_online_lrview import config as base

config = replace(base, name="adapt_ens7_online_lrview", ensemble=7)  # verify_threshold: the five-member file's until measured
