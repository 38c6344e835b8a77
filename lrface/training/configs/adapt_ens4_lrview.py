"""An ensemble of 4 adapted models sharing the frozen teacher (train_adapt.EnsembleMR), exported with the test-time
options of `adapt_handmade_6k_lrview` (mirror averaging, the LR view at 32 px with weight 0.35, the gate floor 0.3)
and its weights stored as float16 (`fp16_weights`: half the file, float32 arithmetic). Members, in order: the three
of `adapt_ens3_lrview` (`adapt_handmade_flip_6k`, `adapt_mix_flip_6k`, `adapt_handmade_flip_6k_s2`), then
`adapt_online_flip_3k`; each trained as a run of its own, then
`lrface train-adapt --reexport SRC1 ... SRC4 --config adapt_ens4_lrview --out M.onnx`.
Tried and not shipped: on dev it scored within noise of the three-member file (the model card's "Reading it")."""
from dataclasses import replace

from lrface.training.configs.adapt_handmade_6k_lrview import config as base

config = replace(base, name="adapt_ens4_lrview", ensemble=4, fp16_weights=True,
                 verify_threshold=0.5162)  # HR-LR at FAR 1e-3 on dev (the lrface eval path on the export)
