"""Teacher-based adaption (lrface.training.train_adapt), the full model: Model_HR = dlib's ResNet through the chip warp,
frozen; Model_LR = a copy of it fine-tuned on MR-GAN LR faces of hr-train + unlabeled-hr (and
real lr-train captures with their identities); translation gate
f = (1 - W) f_HR + W T(f_LR), W = sigmoid(D_LR(f_HR - c)) (train_adapt.CentredGate). Losses: feature supervision (squared Euclidean distance to the teacher's
embedding of the LR face's HR source) on every update, CosFace margin loss where identities exist, adversarial D_LR.
Experiments (the card's ablation table) override a few fields in their own config files."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class AdaptConfig:
    name: str = "adapt_full"
    gate: bool = True  # False: the embedding is Model_LR's feature alone (the "Model_LR on X" rows)
    lr_kind: str = "mrgan"  # LR training faces: mrgan | bicubic | handmade (lrface.training.adapt_data.LR_KINDS)
    # several kinds at once: each LR face of a batch is drawn from one of `lr_kinds` with probabilities
    # `lr_kind_weights` (empty = `lr_kind` alone); every source then has one LR version of each kind to offer
    lr_kinds: tuple[str, ...] = ()
    lr_kind_weights: tuple[float, ...] = ()
    use_unlabeled: bool = True  # also train on unlabeled-hr sources (feature supervision only)
    # share of each batch's LR faces made afresh at every update: the hand-made degradation (blur -> bicubic -> noise
    # -> JPEG, degradations.blur_noise_jpeg_lr) of the HR source at a height drawn from the bundle's heights, the
    # teacher embedding it on the fly. Model_LR then sees many LR versions of a source instead of the bundle's one
    # per kind; 0 = the bundle's LR versions only
    lr_online: float = 0.0
    photometric: float = 1.0  # strength of camera-like colour changes on LR inputs (train_adapt.photometric); 0 = off
    hr_fraction: float = 0.25  # share of each batch that is an HR face (gate runs: HR inputs must stay put)
    # losses
    feature_weight: float = 4.0  # ||f(LR face) - teacher(HR source)||^2 (dlib units); 0 = no feature supervision
    # contrastive feature supervision: softmax over the teacher's centred HR features of every training source,
    # the LR face's own source being the right answer (squared distances alone pull LR features to the mean)
    contrast_weight: float = 1.0
    contrast_scale: float = 20.0
    # real LR captures with identities (lr-train, the target domain): a margin loss on Model_LR's (centred)
    # features of `real_per_batch` of them per update (0 = none; the bundle needs --real-lr)
    real_per_batch: int = 8
    real_weight: float = 0.5
    # distillation from a trained model (an ensemble): the feature supervision's target for an LR face of the
    # bundle becomes that model's fused feature of the same face (`<distill_targets>_<kind>.npy`, written into the
    # bundle by `python -m lrface.training.distill_targets --name NAME`) instead of the teacher's feature of its HR
    # source; HR faces keep theirs. Each real capture's fused feature is also pulled to the model's
    # (`<distill_targets>_real.npy`, squared distance, weight `distill_real_weight`). "" = off
    distill_targets: str = ""
    distill_real_weight: float = 0.0
    cls_weight: float = 0.02  # CosFace on labelled faces (class centres start at the teacher's identity means);
    # 0.1 held the feature loss back in 160-update trials on the training data (train-side loss, not dev)
    margin: str = "cosface"
    scale: float = 32.0
    margin_m: float = 0.35
    adv_weight: float = 0.02  # f(LR face) should look "HR" to D_LR
    d_fused_weight: float = 0.05  # share of D_LR's "LR" examples that are fused LR features (the rest: teacher
    # features of LR faces); D_LR is also the gate, so a strong adversarial game blurs W on HR faces
    # gate
    gate_task_weight: float = 1.0  # D_LR (hence W) also follows the feature / margin losses' gradient; 0 = only
    # its own discriminator loss (the W of an HR face then stays ~0.07 and costs HR-HR matching)
    # exported embedding: the mean of the (unit) embeddings of the face and of its mirror image (both in one
    # batch through the network; twice the cost a face)
    flip_average: bool = False
    # exported embedding: + lr_view_weight x the (unit) embedding of the face seen as an lr_view_height-pixel
    # capture (train_adapt.LRView, in the graph; twice the cost a face); 0 = off
    lr_view_height: int = 0
    lr_view_weight: float = 0.0
    # exported embedding: the gate's W at or below gate_floor counts as an HR face (W -> (W - floor) / (1 - floor));
    # 0 = off. Training never applies it
    gate_floor: float = 0.0
    # exported embedding: the mean fused feature of `ensemble` separately trained (Model_LR, gate) pairs that share
    # the teacher (train_adapt.EnsembleMR; each member costs one more Model_LR pass). Only an export option: its
    # members are trained as runs of their own and joined by `lrface train-adapt --reexport SRC1 SRC2 ...`
    ensemble: int = 1
    # exported file: weights stored as float16, cast back to float32 inside the graph (onnx_weights.store_weights_fp16;
    # half the file, float32 arithmetic)
    fp16_weights: bool = False
    output_center: float = 1.0  # exported embedding: feature - output_center x the teacher's mean descriptor
    translator_hidden: int = 256
    translator_scale: float = 0.1  # the translator's output in dlib's units (one entry of a descriptor spreads ~0.1)
    discriminator_hidden: int = 256
    # optimisation: AdamW on Model_LR and the translator (small steps), the margin head faster
    batch_size: int = 32  # faces through Model_LR per update
    steps: int = 1000
    lr: float = 1e-4
    head_lr: float = 1e-3
    d_lr: float = 2e-4
    d_warmup_steps: int = 600  # D_LR alone on cached teacher features before the adaption (gate runs)
    d_warmup_lr: float = 1e-3
    weight_decay: float = 1e-4
    warmup_steps: int = 50
    log_every: int = 20
    save_every_minutes: float = 5.0
    seed: int = 0
    verify_threshold: float = 0.5  # placeholder until `lrface eval` measures it (HR-LR at FAR 1e-3)


config = AdaptConfig()
