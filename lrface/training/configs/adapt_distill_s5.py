"""A distilled student (issue 11, item 6): one adapted model (the lite embedder's cost) taught by the shipped
five-member ensemble. It starts from member 5 (the shipped lite file's weights, `adapt_online_flip_6k_s5`) and
trains 1,500 more updates of member 1's recipe (fixed hand-made LR faces, no fresh ones) at half the learning
rate, where the target of every LR face is the ensemble's fused feature of that very face instead of the
teacher's feature of its HR source, and each real capture's fused feature is pulled to the ensemble's
(`distill_targets`, `distill_real_weight`). HR faces keep the teacher's feature as target, so the gate keeps them.
Exported with the lite file's test-time options (mirror averaging, LR view 32 px x 0.35, gate floor 0.3, float16).

    lrface train-adapt --reexport lrface/models/weights/embedder.onnx --members 1 2 3 4 5 \\
        --config adapt_ens5_online_lrview --out ens5.onnx   # the five-member file it was taught by (shipped then)
    python -m lrface.training.distill_targets --model ens5.onnx --data runs/adapt-data
    lrface train-adapt --config adapt_distill_s5 --init-from lrface/models/weights/embedder_lite.onnx \\
        --data runs/adapt-data --out runs/adapt_distill_s5 --threads 2
    lrface export runs/adapt_distill_s5/last.pt M.onnx

Rule for shipping, written down before the run (2026-12-07): the student replaces the lite file
(`embedder_lite.onnx`, member 5 alone with the same options) only if, against it, HR-LR and LR rank-1 (TAR at
FAR 1e-3) both rise on both CRC-32 halves of the dev people (`lrface eval --people even|odd`) and HR-HR on all
of dev is at least 89.5 %. It is never a candidate for the default file (the ensemble). No other student or
setting is scored for shipping.

Outcome (2026-12-07, 1,500 updates in 12.1 min): dev HR-HR 89.6, HR-LR 23.9, LR-LR 14.4, rank-1 25.1 against the
lite file's 89.7 / 24.9 / 14.6 / 26.1; on the halves HR-LR -0.4 / -0.8, rank-1 +0.3 / -1.2 (even / odd): the
rule failed, not shipped (the default model card, "Reading it")."""
from dataclasses import replace

from lrface.training.configs.adapt_lite_s5_lrview import config as base

config = replace(base, name="adapt_distill_s5", steps=1500, lr=5e-5, lr_online=0.0, seed=15,
                 distill_targets="ensemble", distill_real_weight=4.0)
