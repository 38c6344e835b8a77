"""An ensemble of two adapted models that share the frozen teacher (train_adapt.EnsembleMR:
the mean of their fused features), exported with the shipped test-time options (mirror averaging, the LR view at
32 px with weight 0.35, the gate floor 0.3; as `adapt_handmade_6k_lrview`); a row of the model card (the
shipped file, `adapt_ens3_lrview`, adds a third member):
- member 1: `adapt_handmade_flip_6k` (hand-made LR, 6,000 updates, seed 0);
- member 2: `adapt_mix_flip_6k` (hand-made / MR-GAN / bicubic LR, 6,000 updates, seed 1).
Each is trained as a run of its own; then
`lrface train-adapt --reexport RUN1/last.pt RUN2/last.pt --config adapt_ens2_lrview --out M.onnx`."""
from dataclasses import replace

from lrface.training.configs.adapt_handmade_6k_lrview import config as base

config = replace(base, name="adapt_ens2_lrview", ensemble=2,
                 verify_threshold=0.5140)  # HR-LR at FAR 1e-3 on dev, measured by `lrface eval` on the export
