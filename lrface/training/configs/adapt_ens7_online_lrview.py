"""`adapt_ens5_online_lrview` (the shipped five members and test-time options, float16 weights) with two more fresh-LR
members, `adapt_online_flip_6k_s6` and `adapt_online_flip_6k_s7`:

    lrface train-adapt --reexport lrface/models/weights/embedder.onnx runs/adapt_online_flip_6k_s7/last.pt \\
        --config adapt_ens7_online_lrview --out M.onnx

(the shipped file, `adapt_ens6_online_lrview` since 2026-12-08, holds the five members and `_s6`; they are read back
from its graph). The rule it is judged by is in
`adapt_online_flip_6k_s6`'s docstring.

Outcome (2026-12-08, `_s7` trained 6,000 updates in 48.6 min on a 2-core Intel Xeon VM): **not shipped**, the rule
failed. Against the shipped six-member file on the CRC-32 halves (even / odd), HR-LR at FAR 1e-3 28.8 / 22.0
(29.0 / 21.9) and rank-1 36.8 / 29.9 (37.6 / 30.2); on all of dev HR-HR 90.2, HR-LR 25.0 (2,396 of 9,596 genuine
pairs, two fewer than the six-member file), LR-LR 15.6, rank-1 27.0; 94 MB, sha256 7f3fde65…
(`docs/results/adapt/metrics_adapt_ens7_online_lrview.json`, `halves_ens7_online_lrview.json`)."""
from dataclasses import replace

from lrface.training.configs.adapt_ens5_online_lrview import config as base

config = replace(base, name="adapt_ens7_online_lrview", ensemble=7)  # verify_threshold: the five-member file's until measured
