"""`adapt_handmade_flip_6k` (member 1's recipe: hand-made LR, mirror averaging) with seed 3 and 4,000 updates instead
of 6,000: a sixth member, trained alone with two threads. Chosen over the fresh-LR recipe (`adapt_online_flip_6k_s6`)
and shortened for time: on a 2-core AMD EPYC VM an update of this recipe took 1.14 s (measured over its first 160
updates), so 6,000 would not leave time to score and test the result within a session after the bundle is rebuilt.

Rule for shipping, written down before the run: `adapt_ens6_lrview` (the shipped five members + this one, the shipped
test-time options) replaces the shipped file only if HR-LR (TAR at FAR 1e-3) and LR rank-1 both rise on both CRC-32
halves of the dev people (`lrface eval --people even|odd`), HR-HR on all of dev stays at or above 90 %, and the file
stays under 100 MB. No other combination is scored for shipping; the member alone is reported only.

Outcome (after the run): the rule failed on the even half (HR-LR level, rank-1 -0.3); not shipped. Numbers in the
embedder's model card (`lrface/models/weights/embedder.md`)."""
from dataclasses import replace

from lrface.training.configs.adapt_handmade_flip_6k import config as base

config = replace(base, name="adapt_handmade_flip_6k_s3", seed=3, steps=4000)
