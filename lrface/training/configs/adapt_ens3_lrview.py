"""The previously shipped embedder (until `adapt_ens5_online_lrview` added two
members): an ensemble of three adapted models that share the frozen teacher (train_adapt.EnsembleMR:
the mean of their fused features), exported with the test-time options of `adapt_handmade_6k_lrview` (mirror
averaging, the LR view at 32 px with weight 0.35, the gate floor 0.3):
- member 1: `adapt_handmade_flip_6k` (hand-made LR, 6,000 updates, seed 0);
- member 2: `adapt_mix_flip_6k` (hand-made / MR-GAN / bicubic LR, 6,000 updates, seed 1);
- member 3: `adapt_handmade_flip_6k_s2` (hand-made LR, 6,000 updates, seed 2).
Weights are stored as float16 (`fp16_weights`: 47 MB instead of 93, float32 arithmetic; embeddings within 3e-4 of
the float32 file's). Each is trained as a run of its own; then
`lrface train-adapt --reexport RUN1/last.pt RUN2/last.pt RUN3/last.pt --config adapt_ens3_lrview --out M.onnx`."""
from dataclasses import replace

from lrface.training.configs.adapt_handmade_6k_lrview import config as base

config = replace(base, name="adapt_ens3_lrview", ensemble=3, fp16_weights=True,
                 verify_threshold=0.5159)  # HR-LR at FAR 1e-3 on dev, measured by `lrface eval` on the export
