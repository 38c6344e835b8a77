"""`adapt_ens5_online_lrview` (the shipped five members, mirror averaging, the LR view, the gate floor, float16
weights) with a sixth fresh-LR member, `adapt_online_flip_6k_s6` (members 4 and 5's recipe, seed 6, 6,000
updates at two threads):

    lrface train-adapt --config adapt_online_flip_6k_s6 --data runs/adapt-data --out runs/adapt_online_flip_6k_s6 \\
        --threads 2
    lrface train-adapt --reexport ens5.onnx runs/adapt_online_flip_6k_s6/last.pt \\
        --config adapt_ens6_online_lrview --out M.onnx

where `ens5.onnx` is the five-member file shipped before (commit e75dfd1, sha256 69adb42b…; its members are read
back from its graph). The shipped file, now this one, gives the five-member file back byte for byte:
`lrface train-adapt --reexport lrface/models/weights/embedder.onnx --members 1 2 3 4 5 --config
adapt_ens5_online_lrview --out ens5.onnx`.

Rule for shipping, written down before the run (2026-12-08): this file replaces the shipped `embedder.onnx` only if,
against it, HR-LR (TAR at FAR 1e-3) and LR rank-1 both rise on both CRC-32 halves of the dev people
(`lrface eval --people even|odd`), HR-HR on all of dev stays at or above 90 %, and the file stays under 100 MB. If it
ships, its `verify_threshold` is measured on it (HR-LR at FAR 1e-3 on dev). No other combination is scored for
shipping; the member alone (mirror only, and with the shipped LR view and floor) is reported only. The sixth
member of the last attempt (`adapt_ens6_lrview`, a fixed hand-made LR member at 4,000 updates) failed the same
rule."""
from dataclasses import replace

from lrface.training.configs.adapt_ens5_online_lrview import config as base

config = replace(base, name="adapt_ens6_online_lrview", ensemble=6,
                 verify_threshold=0.5144)  # HR-LR at FAR 1e-3 on dev, measured on this file (lrface eval)
