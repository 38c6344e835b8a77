"""Member 1 of the shipped ensemble (`adapt_ens6_online_lrview`; before it `adapt_ens5_online_lrview` and
`adapt_ens3_lrview`): the full model on hand-made LR (`adapt_full_handmade`) with six times the ablation
table's budget (6,000 updates), exported with mirror averaging (the embedding of a face is the mean of its own
and its mirror image's unit embeddings; `flip_average`, twice the cost a face)."""
from dataclasses import replace

from lrface.training.configs.adapt_full_handmade import config as base

config = replace(base, name="adapt_handmade_flip_6k", steps=6000, flip_average=True,
                 verify_threshold=0.5009)  # HR-LR at FAR 1e-3 on dev, measured by `lrface eval` on the export
