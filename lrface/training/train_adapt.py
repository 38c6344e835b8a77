"""Adapt a pretrained HR face model to LR captures (Algorithm 2 with Model_HR = dlib's ResNet, frozen).

    lrface train-adapt --data runs/adapt-data --out runs/adapt_full [--config adapt_full] [--steps N]
        [--max-minutes M] [--threads T] [--resume]
    lrface train-adapt --export-teacher lrface/models/weights/dlib.onnx      # dlib alone, as an embedder (comparison)
    lrface train-adapt --reexport SRC --config NAME --out M.onnx    # SRC's weights (last.pt or .onnx), NAME's export options
    lrface train-adapt --reexport SRC1 SRC2 --config NAME --out M.onnx   # an ensemble (NAME's `ensemble` = 2)

`--data` is the bundle of `lrface.training.adapt_data` (HR sources, one LR version of each kind per source, and the
frozen teacher's embeddings of all of them, computed once). Model_MR is lrface.models.ran.ModelMR with

    f_HR = dlib(warp(x))                      frozen teacher (its features are read from the bundle's cache)
    f_LR = dlib'(warp(x))                     Model_LR: a copy of the teacher, fine-tuned here
    f    = (1 - W) f_HR + W T(f_LR),  W = sigmoid(D_LR(f_HR - c))   (CentredGate)

Each update takes `batch_size` sources; a `hr_fraction` share of them enter as their HR face, the rest as their LR
version (`lr_kind`). Losses on the fused feature f:
- feature supervision: ||f - teacher(HR source)||^2 for every face (an HR face's target is its own teacher
  feature, so the gate learns to leave HR faces alone). Squared Euclidean distance, dlib's own metric: its
  descriptors share a large common component (the mean descriptor's norm is ~93% of a descriptor's), so a cosine
  loss on them is blind to most of what tells people apart;
- probabilistic supervision: CosFace on faces with an identity (unlabeled-hr faces have none), on features minus
  the teacher's mean descriptor (`center`), class centres starting at the teacher's mean per identity;
- adversarial: f of an LR face should look "HR" to D_LR, which is updated on its own on teacher features of HR
  faces (0), of LR faces (1) and on fused LR features (1), all centred, plus (`gate_task_weight`) the gradient
  of the feature and margin losses through W, so the gate also learns how much of Model_LR each face needs; before the first update D_LR is warmed
  up alone on the cached teacher features (`d_warmup_steps`), so W is small on HR faces from the start.
With `gate = False` the embedding is f_LR alone (the "Model_LR trained on X" rows of the ablation table).
Only Model_LR runs forward and backward: the teacher's work is all in the cache. One budget for every
experiment: `steps` x `batch_size` faces through Model_LR.

The run folder holds last.pt (resumable with --resume; batches depend only on the seed and the step),
metrics.csv and run.json (wall time, threads, hardware). `lrface export OUT/last.pt M.onnx` writes the embedder.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from lrface.core.face import FACE_HEIGHT, FACE_WIDTH, lr_width_for_height, to_canvas
from lrface.models.dlib_resnet import DlibFaceModel, count_macs
from lrface.models.ran import ModelMR, TranslationGate
from lrface.training.adapt_data import LR_KINDS, load as load_bundle
from lrface.training.common import (MetricsLog, fit, load_typed_config, resume_checkpoint, save_checkpoint,
                             step_generator)
from lrface.training.configs.adapt_full import AdaptConfig
from lrface.training.degradations import blur_noise_jpeg_lr
from lrface.training.losses import MarginHead, margin_loss
from lrface.training.train_embedder import export_embedding_module

DIM = 128
METRIC_FIELDS = ["step", "time", "lr", "loss", "feat", "contrast", "real_cls", "real_distill", "feat_lr", "cos_lr", "cls", "acc", "adv", "loss_d",
                 "w_hr", "w_lr", "images_per_s"]


class CentredGate(TranslationGate):
    """The translation gate of lrface.models.ran for a pretrained Model_HR whose features Model_LR starts from:

        f = (1 - W) f_HR + W T(f_LR),   T(g) = g + s MLP(g - c),   W = sigmoid(D_LR(f_HR - c))

    with c the teacher's mean descriptor. Model_LR starts as a copy of the teacher, so Model_LR and the teacher
    speak the same units and the fusion is convex: an HR face (W ~ 0) keeps the teacher's feature, an LR face
    (W ~ 1) gets Model_LR's, translated. (The project's from-scratch RAN fuses additively, f_HR + W T(f_LR), to
    amplify a weak HR feature; here that starts every LR face at twice its feature and stalled in trials.) The
    translator's residual MLP is scaled by s (`translator_scale`, about the spread of one descriptor entry) and
    its last layer starts at zero, so T is the identity at the start. D_LR reads centred features: dlib's descriptors share a large common component (its norm is ~93%
    of a descriptor's) that would otherwise dominate every direction D_LR sees."""

    def __init__(self, dim: int, translator_hidden: int, discriminator_hidden: int, translator_scale: float = 0.1):
        super().__init__(dim, translator_hidden, discriminator_hidden)
        self.register_buffer("center", torch.zeros(dim))
        self.translator_scale = float(translator_scale)
        last = self.translator.mlp[-1]
        torch.nn.init.zeros_(last.weight)
        torch.nn.init.zeros_(last.bias)

    w_floor = 0.0  # export option (`gate_floor`): W at or below it counts as an HR face, W = (W - floor) / (1 - floor)

    def forward(self, f_hr: torch.Tensor, f_lr: torch.Tensor) -> dict[str, torch.Tensor]:
        w = torch.sigmoid(self.discriminator(f_hr - self.center))
        if self.w_floor > 0:
            w = ((w - self.w_floor) / (1 - self.w_floor)).clamp_min(0)
        translated = f_lr + self.translator_scale * self.translator.mlp(f_lr - self.center)
        return {"w": w, "fused": f_hr + w * (translated - f_hr)}


class Centred(torch.nn.Module):
    """The exported embedding: the network's feature minus `output_center` x the teacher's mean descriptor (kept
    in the graph as `center`), before the L2 normalisation of the export. Cosine similarity of centred dlib
    descriptors tells LR faces apart much better than of raw ones (their common component dominates the angle)."""

    def __init__(self, net: torch.nn.Module, dim: int = DIM):
        super().__init__()
        self.net = net
        self.register_buffer("center", torch.zeros(dim))

    def forward(self, face: torch.Tensor) -> torch.Tensor:
        return self.net(face) - self.center


class FlipAverage(torch.nn.Module):
    """Test-time mirror averaging: the sum of the unit embeddings of a face and of its left-right mirror image
    (the aligned template is symmetric), computed as one batch of 2N (the export normalises the sum)."""

    def __init__(self, net: torch.nn.Module):
        super().__init__()
        self.net = net

    def forward(self, face: torch.Tensor) -> torch.Tensor:
        both = F.normalize(self.net(torch.cat([face, torch.flip(face, dims=[3])])), dim=1)
        return both.reshape(2, -1, both.shape[1]).sum(0)


def resize_matrix(src: int, dst: int) -> np.ndarray:
    """The linear map (dst x src) of the inference core's resize (`lrface.core.face.resize_rgb`: Pillow's
    antialiased bicubic) along one axis, read off Pillow itself by resizing the identity as a float image."""
    eye = Image.fromarray(np.eye(src, dtype=np.float32), "F")
    return np.asarray(eye.resize((src, dst), Image.BICUBIC), dtype=np.float32)


def lr_view_matrices(height: int) -> tuple[np.ndarray, np.ndarray]:
    """(V_h, V_w): the canvas brought to a `height`-pixel capture and back, `V_h @ x @ V_w.T`, as
    `lrface.core.face.to_canvas(to_lr_size(x, height))` does (up to its rounding to 8 bits)."""
    width = lr_width_for_height(height)
    v_h = resize_matrix(height, FACE_HEIGHT) @ resize_matrix(FACE_HEIGHT, height)
    v_w = resize_matrix(width, FACE_WIDTH) @ resize_matrix(FACE_WIDTH, width)
    return v_h, v_w


class LRView(torch.nn.Module):
    """Test-time LR view: the embedding of a face plus `weight` x the embedding of the same face seen as a
    `height`-pixel capture (downsampled and brought back to the canvas, inside the graph), both unit length and
    computed as one batch of 2N. A sharp photo then also carries the features that a capture of it would get,
    which is where Model_LR puts real captures (the gallery-at-probe-resolution idea); a capture changes
    little when it is seen at its own resolution again. Twice the cost a face."""

    def __init__(self, net: torch.nn.Module, height: int, weight: float):
        super().__init__()
        self.net, self.height, self.weight = net, int(height), float(weight)
        v_h, v_w = lr_view_matrices(self.height)
        self.register_buffer("view_h", torch.from_numpy(v_h))
        self.register_buffer("view_w_t", torch.from_numpy(np.ascontiguousarray(v_w.T)))

    def view(self, face: torch.Tensor) -> torch.Tensor:
        return torch.matmul(torch.matmul(self.view_h, face), self.view_w_t).clamp(-1, 1)

    def forward(self, face: torch.Tensor) -> torch.Tensor:
        both = F.normalize(self.net(torch.cat([face, self.view(face)])), dim=1)
        both = both.reshape(2, -1, both.shape[1])
        return both[0] + self.weight * both[1]


class LRBranchOnly(torch.nn.Module):
    """The embedding of the no-gate experiments: Model_LR's feature alone."""

    def __init__(self, lr_branch: torch.nn.Module):
        super().__init__()
        self.lr_branch = lr_branch

    def forward(self, face: torch.Tensor) -> torch.Tensor:
        return self.lr_branch(face)


class Member(torch.nn.Module):
    """One (Model_LR, gate) pair of an ensemble (`EnsembleMR`)."""

    def __init__(self, lr_branch: torch.nn.Module, gate: CentredGate):
        super().__init__()
        self.lr_branch, self.gate = lr_branch, gate

    def forward(self, f_hr: torch.Tensor, face: torch.Tensor) -> torch.Tensor:
        # called as a module, so the exported graph's node names carry `members.<k>` (the weights' read-back
        # maps node names to modules)
        return self.gate(f_hr, self.lr_branch(face))["fused"]


class EnsembleMR(torch.nn.Module):
    """Several adapted models that share the frozen teacher: the mean of their fused features,

        f = 1/K sum_k [(1 - W_k) f_HR + W_k T_k(f_LR,k)],

    with f_HR computed once. An HR face (every W_k ~ 0) keeps the teacher's feature; an LR face gets the mean of
    K Model_LR copies trained with other seeds / LR faces, whose errors partly cancel (`ensemble` in the config;
    `lrface train-adapt --reexport SRC1 SRC2 ...` builds one from separately trained runs)."""

    def __init__(self, hr_branch: torch.nn.Module, members: list[Member]):
        super().__init__()
        self.hr_branch = hr_branch
        self.members = torch.nn.ModuleList(members)

    def forward(self, face: torch.Tensor) -> torch.Tensor:
        f_hr = self.hr_branch(face)
        fused = [member(f_hr, face) for member in self.members]
        return torch.stack(fused).mean(0)


def member_pair(cfg: AdaptConfig, lr_state: dict | None = None, gate_state: dict | None = None,
                pretrained: bool = True) -> tuple[DlibFaceModel, CentredGate]:
    """One (Model_LR, gate) pair of `cfg`'s architecture with the given weights (Model_LR: the teacher's when
    `lr_state` is None and `pretrained`), the gate floor set to `cfg.gate_floor`."""
    lr_branch = DlibFaceModel.from_dat() if pretrained else DlibFaceModel()
    if lr_state is not None:
        lr_branch.load_state_dict(lr_state)
    gate = CentredGate(DIM, cfg.translator_hidden, cfg.discriminator_hidden, cfg.translator_scale)
    if gate_state is not None:
        gate.load_state_dict(gate_state)
    gate.w_floor = float(cfg.gate_floor)
    return lr_branch, gate


def build_embedder(cfg: AdaptConfig, lr_state: dict | None = None, gate_state: dict | None = None,
                   pretrained: bool = True, more: list[dict] = ()) -> torch.nn.Module:
    """The exported network: ModelMR(teacher, Model_LR, centred gate), or Model_LR alone, or (`cfg.ensemble` > 1)
    the ensemble of `cfg.ensemble` (Model_LR, gate) pairs sharing the teacher, the first one's weights given by
    `lr_state` / `gate_state`, the others' by `more` ({"lr_branch", "gate"} each). `pretrained=False` leaves the
    branches uninitialised (for loading weights from elsewhere, e.g. an exported graph)."""
    def branch() -> DlibFaceModel:
        return DlibFaceModel.from_dat() if pretrained else DlibFaceModel()

    def pair(lr: dict | None, gs: dict | None) -> tuple[DlibFaceModel, CentredGate]:
        return member_pair(cfg, lr, gs, pretrained)

    if cfg.ensemble < 1 or (cfg.ensemble > 1 and not cfg.gate):
        raise ValueError(f"config {cfg.name}: ensemble must be >= 1, and an ensemble needs the gate")
    if more and len(more) != cfg.ensemble - 1:
        raise ValueError(f"config {cfg.name} is an ensemble of {cfg.ensemble}, got the weights of {len(more) + 1}")
    lr_branch, gate = pair(lr_state, gate_state)
    if cfg.ensemble > 1:
        others = list(more) or [{}] * (cfg.ensemble - 1)
        members = [Member(lr_branch, gate)] + [Member(*pair(m.get("lr_branch"), m.get("gate"))) for m in others]
        model = EnsembleMR(branch(), members)
    elif cfg.gate:
        model = ModelMR(branch(), lr_branch, DIM, cfg.translator_hidden, cfg.discriminator_hidden)
        model.gate = gate
    else:
        model = LRBranchOnly(lr_branch)
    out = Centred(model)
    with torch.no_grad():
        out.center.copy_(gate.center * cfg.output_center)
    if cfg.flip_average:
        out = FlipAverage(out)
    if cfg.lr_view_height:
        out = LRView(out, cfg.lr_view_height, cfg.lr_view_weight)
    return out.eval()


def export_onnx(ckpt: dict, out_path) -> Path:
    """Export an `adapt` checkpoint as an embedder (face [N,3,112,96] -> L2-normalised [N,128])."""
    if ckpt.get("kind") != "adapt":
        raise ValueError(f"not an adapt checkpoint (kind {ckpt.get('kind')!r})")
    cfg = AdaptConfig(**ckpt["config"])
    net = build_embedder(cfg, ckpt["lr_branch"], ckpt.get("gate"), more=ckpt.get("more", []))
    model_id = f"{cfg.name}-dlib_resnet-step{ckpt['step']}"
    return export_embedding_module(net, DIM, out_path, model_id, cfg.verify_threshold, cfg.fp16_weights)


# the fields that shape the trained networks: weights move between configs (--reexport, --init-from) only where
# these agree; every other field (training recipe, export options such as the views, the floor, the threshold) may differ
ARCHITECTURE_FIELDS = ("gate", "translator_hidden", "translator_scale", "discriminator_hidden")
# an ensemble's members each have these; the member count (`ensemble`) is the exported graph's own


def parse_model_id(model_id: str) -> tuple[AdaptConfig, int] | None:
    """(config, step) of an adapt export's model_id `<adapt config>-dlib_resnet-step<N>` (as `export_onnx` writes
    it), or None when it is not one or its config no longer exists."""
    import importlib
    import re

    m = re.fullmatch(r"(adapt_[a-z0-9_]+?)-dlib_resnet-step(\d+)", str(model_id))
    if m is None:
        return None
    try:
        cfg = importlib.import_module(f"lrface.training.configs.{m[1]}").config
    except ImportError:
        return None
    return (cfg, int(m[2])) if isinstance(cfg, AdaptConfig) else None


def adapt_checkpoint_from_onnx(path) -> dict:
    """The `adapt` checkpoint fields an exported embedder carries (config, step, Model_LR's and the gate's
    weights), read back from the graph's initializers (`lrface.training.onnx_weights`): its sidecar's model_id
    `<config>-dlib_resnet-step<N>` names the config that built it."""
    from lrface.training.onnx_weights import load_onnx_weights
    from lrface.training.train_embedder import NormalisedEmbedding

    path = Path(path)
    sidecar = path.with_suffix(".json")
    model_id = json.loads(sidecar.read_text()).get("model_id", "") if sidecar.is_file() else ""
    parsed = parse_model_id(model_id)
    if parsed is None:
        raise ValueError(f"{path}: not an adapt embedder (its sidecar's model_id is {model_id!r}, expected "
                         "<adapt config>-dlib_resnet-step<N> with that config in lrface/training/configs)")
    cfg, step = parsed
    net = NormalisedEmbedding(build_embedder(cfg, pretrained=False))
    missing = load_onnx_weights(net, path)
    model = next((mod for mod in net.modules() if isinstance(mod, (ModelMR, EnsembleMR, LRBranchOnly))), None)
    if model is None or isinstance(model, LRBranchOnly) or [k for k in missing if ".lr_branch." in k or ".gate." in k]:
        raise ValueError(f"{path}: only a gated adapt embedder's weights can be read back (missing: {missing[:5]})")
    pairs = ([(m.lr_branch, m.gate) for m in model.members] if isinstance(model, EnsembleMR)
             else [(model.lr_branch, model.gate)])
    (lr_branch, gate), rest = pairs[0], pairs[1:]
    return {"kind": "adapt", "config": dataclasses.asdict(cfg), "step": step,
            "lr_branch": lr_branch.state_dict(), "gate": gate.state_dict(),
            "more": [{"lr_branch": lb.state_dict(), "gate": g.state_dict()} for lb, g in rest]}


def reexport(srcs, config: str, out_path, take: list[int] | None = None) -> Path:
    """The weights of `srcs` (adapt checkpoints, or adapt embedders' ONNX files; one path or a list) exported with
    the export options of `config` (mirror, LR view, gate floor, centring, threshold). Their ARCHITECTURE_FIELDS
    must match `config`'s; several sources (or an ensemble's file) make the members of an ensemble config, as many
    as its `ensemble` says, in the order given. `take` (1-based) keeps only those of the models the sources hold,
    e.g. [1] for the first member of an ensemble alone."""
    new = load_typed_config(config, AdaptConfig, "train-adapt", "an")
    srcs = [srcs] if isinstance(srcs, (str, Path)) else list(srcs)
    members = []
    for src in srcs:
        ckpt = load_adapt_weights(src, new)
        members += [{"lr_branch": ckpt["lr_branch"], "gate": ckpt["gate"], "step": ckpt["step"]}]
        members += [{**m, "step": ckpt["step"]} for m in ckpt.get("more", [])]
    if take:
        if any(not 1 <= k <= len(members) for k in take):
            raise ValueError(f"--members {' '.join(map(str, take))}: {', '.join(map(str, srcs))} hold "
                             f"{len(members)} model(s), numbered 1 to {len(members)}")
        members = [members[k - 1] for k in take]
    if len(members) != new.ensemble:
        raise ValueError(f"config {new.name} takes the weights of {new.ensemble} model(s), "
                         f"{', '.join(map(str, srcs))} hold {len(members)}")
    first = members[0]
    return export_onnx({"kind": "adapt", "config": dataclasses.asdict(new), "step": max(m["step"] for m in members),
                        "lr_branch": first["lr_branch"], "gate": first["gate"], "more": members[1:]}, out_path)


def load_adapt_weights(src, cfg: AdaptConfig | None = None) -> dict:
    """config, step, Model_LR's and the gate's weights of `src` (an adapt checkpoint, or an adapt embedder's ONNX
    file); ValueError unless its architecture (ARCHITECTURE_FIELDS) is `cfg`'s (when given)."""
    src = Path(src)
    if src.suffix == ".onnx":
        ckpt = adapt_checkpoint_from_onnx(src)
    else:
        ckpt = torch.load(src, map_location="cpu", weights_only=True)
        if not isinstance(ckpt, dict) or ckpt.get("kind") != "adapt":
            raise ValueError(f"{src}: not an adapt checkpoint")
    if cfg is None:
        return ckpt
    old = AdaptConfig(**ckpt["config"])
    differ = [f for f in ARCHITECTURE_FIELDS if getattr(old, f) != getattr(cfg, f)]
    if differ:
        raise ValueError(f"config {cfg.name} differs from the weights' config {old.name} in {', '.join(differ)}")
    return ckpt


def export_teacher(out_path, center: np.ndarray | None = None) -> Path:
    """dlib's ResNet through the chip warp, as an embedder (the comparison rows): its own descriptor, or with
    `center` (the teacher's mean descriptor over the training sources) subtracted, like the adapted models."""
    if center is None:
        return export_embedding_module(DlibFaceModel.from_dat(), DIM, out_path, "dlib_resnet_v1-chipwarp", 0.5)
    net = Centred(DlibFaceModel.from_dat())
    with torch.no_grad():
        net.center.copy_(torch.from_numpy(np.array(center, np.float32)))
    return export_embedding_module(net.eval(), DIM, out_path, "dlib_resnet_v1-chipwarp-centred", 0.5)


class MixedLR:
    """The LR versions a batch draws from: one kind (`lr_kind`), or several (`lr_kinds`), each LR face of a batch
    taking one kind at random (`weights`, default equal). Arrays stay memory-mapped; reads go in index order."""

    def __init__(self, images: list, teacher: list, weights=()):
        self.images_by_kind, self.teacher_by_kind = images, teacher
        w = np.asarray(weights if len(weights) else [1.0] * len(images), np.float64)
        self.probs = torch.from_numpy(w / w.sum())

    def draw(self, n: int, gen: torch.Generator) -> np.ndarray | None:
        if len(self.images_by_kind) == 1:  # one kind: no draw, so single-kind runs keep their batches
            return None
        return torch.multinomial(self.probs, n, replacement=True, generator=gen).numpy()

    def _gather(self, arrays: list, sel: np.ndarray, kind_of: np.ndarray | None) -> np.ndarray:
        if kind_of is None:
            return np.asarray(arrays[0][sel])
        out = np.empty((len(sel),) + arrays[0].shape[1:], arrays[0].dtype)
        for k, a in enumerate(arrays):
            m = kind_of == k
            if m.any():
                out[m] = a[sel[m]]
        return out

    def images(self, sel: np.ndarray, kind_of: np.ndarray | None) -> np.ndarray:
        return self._gather(self.images_by_kind, sel, kind_of)

    def teacher(self, sel: np.ndarray, kind_of: np.ndarray | None) -> np.ndarray:
        return self._gather(self.teacher_by_kind, sel, kind_of)


def warm_up_discriminator(gate: CentredGate, pool: np.ndarray, t_hr, lr_sets: MixedLR, cfg: AdaptConfig,
                          device) -> None:
    """D_LR alone on the cached teacher features (HR faces 0, LR faces 1) before the adaption starts, so that the
    gate tells resolutions apart from the first update (HR faces then pass nearly untouched)."""
    opt = torch.optim.Adam(gate.discriminator.parameters(), lr=cfg.d_warmup_lr)
    for i in range(cfg.d_warmup_steps):
        sel = np.sort(pool[torch.randint(len(pool), (256,), generator=step_generator(cfg.seed, 11, i)).numpy()])
        kind_of = lr_sets.draw(len(sel), step_generator(cfg.seed, 12, i))
        x = torch.from_numpy(np.concatenate([t_hr[sel], lr_sets.teacher(sel, kind_of)])).to(device) - gate.center
        y = torch.cat([torch.zeros(len(sel), 1), torch.ones(len(sel), 1)]).to(device)
        loss = F.binary_cross_entropy_with_logits(gate.discriminator(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    with torch.no_grad():
        w = torch.sigmoid(gate.discriminator(x))
    print(f"train-adapt: D_LR warm-up, {cfg.d_warmup_steps} updates: loss {loss.item():.3f}, mean W on HR "
          f"{w[:len(sel)].mean().item():.3f}, on LR {w[len(sel):].mean().item():.3f}", flush=True)


def fresh_lr(hr_faces: np.ndarray, heights: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """New hand-made LR versions (degradations.blur_noise_jpeg_lr: random blur, noise and JPEG quality) of HR faces
    (N, 112, 96, 3) uint8 at the given native heights, brought back to the canvas by the inference core's resize
    path, as the bundle's `handmade` versions are (AdaptConfig.lr_online)."""
    return np.stack([to_canvas(blur_noise_jpeg_lr(f, int(h), rng)) for f, h in zip(hr_faces, heights)])


def photometric(x: torch.Tensor, strength: float, gen: torch.Generator) -> torch.Tensor:
    """Camera-like colour changes of LR faces in [0, 1] (N, 3, H, W): greyscale (night mode), white-balance
    casts, gamma and contrast. Real captures show far more of these than the MR-GAN's faces do (the model card's
    note), and dlib's features are colour-sensitive."""
    n = x.shape[0]
    rnd = lambda *shape: torch.rand(*shape, generator=gen).to(x.device)  # noqa: E731
    gains = torch.exp((rnd(n, 3, 1, 1) * 2 - 1) * 0.25 * strength)
    x = (x * gains).clamp(0, 1)
    gamma = torch.exp((rnd(n, 1, 1, 1) * 2 - 1) * 0.4 * strength)
    x = x.clamp_min(1e-4) ** gamma
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    x = ((x - mean) * (1 + (rnd(n, 1, 1, 1) * 2 - 1) * 0.35 * strength) + mean).clamp(0, 1)
    grey = (x * torch.tensor([0.299, 0.587, 0.114], device=x.device).view(1, 3, 1, 1)).sum(1, keepdim=True)
    to_grey = rnd(n, 1, 1, 1) < 0.25 * strength
    return torch.where(to_grey, grey.expand_as(x), x)


def learning_rate(base: float, step: int, total: int, warmup: int) -> float:
    if step < warmup:
        return base * (step + 1) / warmup
    return base * 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, total - warmup))))


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="lrface train-adapt", description=__doc__.split("\n\n")[0])
    p.add_argument("--data", help="lrface.training.adapt_data bundle (HR sources, LR versions, teacher features)")
    p.add_argument("--out", help="run folder: last.pt, metrics.csv, run.json")
    p.add_argument("--config", default="adapt_full", help="lrface/training/configs/NAME.py (default adapt_full)")
    p.add_argument("--steps", type=int, help="updates in all (the budget; default: the config's)")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--max-minutes", type=float, help="stop cleanly (checkpoint) after this much wall time")
    p.add_argument("--threads", type=int, help="torch CPU threads")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="default: CUDA when available")
    p.add_argument("--seed", type=int)
    p.add_argument("--resume", action="store_true", help="continue from OUT/last.pt when it exists")
    p.add_argument("--init-from", metavar="SRC", help="fine-tune: start Model_LR and the gate from SRC (an adapt "
                   "last.pt, or an adapt embedder's .onnx such as the shipped lrface/models/weights/embedder.onnx) "
                   "instead of the teacher; margin heads and optimisers start fresh, no D_LR warm-up")
    p.add_argument("--reexport", metavar="SRC", nargs="+", help="only export: the weights of SRC (an adapt last.pt, "
                   "or an adapt embedder's .onnx) with --config's export options (mirror, LR view, gate floor, "
                   "threshold) to --out (an .onnx path); several SRCs: the members of an ensemble config")
    p.add_argument("--members", metavar="K", nargs="+", type=int, help="with --reexport: only these of the models "
                   "the SRCs hold (1-based, in order), e.g. `--members 1` for an ensemble's first member alone")
    p.add_argument("--export-teacher", metavar="OUT.onnx", help="only export dlib's ResNet (+ warp) as an embedder; "
                   "with --data, centred on the bundle's mean teacher descriptor")
    args = p.parse_args(argv)
    if args.reexport and not (args.out and args.out.endswith(".onnx")):
        p.error("--reexport needs --out OUT.onnx")
    if args.members and not args.reexport:
        p.error("--members goes with --reexport")
    if not args.export_teacher and not args.reexport and not (args.data and args.out):
        p.error("--data and --out are required (or --export-teacher OUT.onnx, or --reexport SRC --out OUT.onnx)")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.reexport:
        try:
            print(f"train-adapt: wrote {reexport(args.reexport, args.config, args.out, args.members)}")
        except (OSError, ValueError) as e:
            raise SystemExit(f"train-adapt: {e}")
        return 0
    if args.export_teacher:
        center = None
        if args.data:  # centred on the bundle's mean teacher descriptor (the sources the adapted models use)
            center = np.asarray(load_bundle(args.data)["teacher_hr"]).mean(0)
        print(f"train-adapt: wrote {export_teacher(args.export_teacher, center)}")
        return 0
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    ckpt = resume_checkpoint(out, args.resume, "adapt", "train-adapt")
    cfg = AdaptConfig(**ckpt["config"]) if ckpt else load_typed_config(args.config, AdaptConfig, "train-adapt", "an")
    cfg = dataclasses.replace(cfg, **{k: v for k, v in {"steps": args.steps, "batch_size": args.batch_size,
                                                          "seed": args.seed}.items() if v is not None})
    if cfg.ensemble != 1:
        raise SystemExit(f"train-adapt: config {cfg.name} is an ensemble of {cfg.ensemble} models: train each member "
                         "as a run of its own, then join them with --reexport SRC1 SRC2 ... --config "
                         f"{cfg.name} --out M.onnx")
    kinds = tuple(cfg.lr_kinds) or (cfg.lr_kind,)
    for kind in kinds:
        if kind not in LR_KINDS:
            raise SystemExit(f"train-adapt: LR kinds must be among {', '.join(LR_KINDS)}, not {kind!r}")
    if not 0.0 <= cfg.lr_online <= 1.0:
        raise SystemExit(f"train-adapt: lr_online is a share of the LR faces, within [0, 1], not {cfg.lr_online}")
    if cfg.lr_kinds and len(cfg.lr_kind_weights) not in (0, len(kinds)):
        raise SystemExit("train-adapt: lr_kind_weights needs one weight per entry of lr_kinds")

    # data: every array stays memory-mapped; a batch is gathered by index
    data = load_bundle(args.data)
    labels_all = np.array(data["labels"])
    pool = np.arange(len(labels_all)) if cfg.use_unlabeled else np.flatnonzero(labels_all >= 0)
    identities = data["meta"]["identities"]
    hr_images, t_hr = data["hr"], data["teacher_hr"]
    lr_sets = MixedLR([data[f"lr_{k}"] for k in kinds], [data[f"teacher_{k}"] for k in kinds],
                      cfg.lr_kind_weights if cfg.lr_kinds else ())
    distill = None  # a trained model's fused features of the bundle's LR faces (and real captures): the targets
    if cfg.distill_targets:
        faces = {f"{cfg.distill_targets}_{k}": data[f"lr_{k}"] for k in kinds}  # targets -> the faces they are of
        if cfg.distill_real_weight > 0:
            faces[f"{cfg.distill_targets}_real"] = data.get("real_lr", ())
        missing = [n for n in faces if n not in data]
        stale = [n for n in faces if n in data and len(data[n]) != len(faces[n])]
        if stale:
            raise SystemExit(f"train-adapt: the bundle's {', '.join(stale)} do not match its faces (made for another "
                             "bundle?); write them again with python -m lrface.training.distill_targets")
        if missing:
            raise SystemExit(f"train-adapt: config {cfg.name} distills from targets the bundle lacks "
                             f"({', '.join(m + '.npy' for m in missing)}); write them with: python -m "
                             f"lrface.training.distill_targets --model MODEL --data {args.data} --name "
                             f"{cfg.distill_targets} --kinds {' '.join(kinds)}")
        distill = {"lr": MixedLR([data[f"{cfg.distill_targets}_{k}"] for k in kinds],
                                 [data[f"{cfg.distill_targets}_{k}"] for k in kinds]),
                   "real": data.get(f"{cfg.distill_targets}_real")}

    device = torch.device("cuda" if args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
                          else "cpu")
    torch.manual_seed(cfg.seed)  # the gate's and heads' initial weights
    # model: Model_LR starts as the teacher; the gate and the head are new
    lr_branch = DlibFaceModel.from_dat()
    gate = CentredGate(DIM, cfg.translator_hidden, cfg.discriminator_hidden, cfg.translator_scale)
    head = MarginHead(len(identities), DIM, cfg.margin, cfg.scale, cfg.margin_m)
    with torch.no_grad():  # class centres at the teacher's mean (centred, unit) feature of each identity
        gate.center.copy_(torch.from_numpy(np.array(t_hr[pool]).mean(0)))
        labelled = np.flatnonzero(labels_all >= 0)
        feats = F.normalize(torch.from_numpy(np.array(t_hr[labelled])) - gate.center, dim=1)
        centres = torch.zeros(len(identities), DIM).index_add_(0, torch.from_numpy(labels_all[labelled]), feats)
        head.weight.copy_(F.normalize(centres, dim=1))
    init_from = None
    if args.init_from and not ckpt:  # a resumed run keeps its own weights
        try:
            start_weights = load_adapt_weights(args.init_from, cfg)
        except (OSError, ValueError) as e:
            raise SystemExit(f"train-adapt: --init-from {e}")
        if start_weights.get("more"):
            raise SystemExit(f"train-adapt: --init-from {args.init_from} is an ensemble; start from one member's run")
        lr_branch.load_state_dict(start_weights["lr_branch"])
        gate.load_state_dict(start_weights["gate"])  # with its own centre: its D_LR was trained on it
        init_from = f"{args.init_from} (step {start_weights['step']} of {start_weights['config']['name']})"
    elif ckpt:
        init_from = ckpt.get("init_from")
    real = None
    if cfg.real_per_batch > 0:
        if "real_lr" not in data:
            raise SystemExit(f"train-adapt: config {cfg.name} trains on real LR captures; add them to the bundle: "
                             "python -m lrface.training.adapt_data --real-lr ../shared/data/lr-train --out DATA")
        real_labels = np.array(data["real_labels"])
        real_ids = data["meta"]["real_identities"]
        real_head = MarginHead(len(real_ids), DIM, cfg.margin, cfg.scale, cfg.margin_m)
        with torch.no_grad():  # class centres at the teacher's (centred) mean feature of each real identity
            feats = F.normalize(torch.from_numpy(np.array(data["teacher_real"])) - gate.center, dim=1)
            centres = torch.zeros(len(real_ids), DIM).index_add_(0, torch.from_numpy(real_labels), feats)
            real_head.weight.copy_(F.normalize(centres, dim=1))
        real = {"images": data["real_lr"], "labels": real_labels, "head": real_head}
        head = torch.nn.ModuleDict({"hr": head, "real": real_head})
    else:
        head = torch.nn.ModuleDict({"hr": head})
    optimizer = torch.optim.AdamW([
        {"params": list(lr_branch.parameters()) + list(gate.translator.parameters()), "lr_scale": 1.0},
        {"params": list(head.parameters()), "lr_scale": cfg.head_lr / cfg.lr},
    ], lr=cfg.lr, weight_decay=cfg.weight_decay)
    d_optimizer = torch.optim.Adam(gate.discriminator.parameters(), lr=cfg.d_lr, betas=(0.5, 0.999))
    step, elapsed_before = 0, 0.0
    if ckpt:
        lr_branch.load_state_dict(ckpt["lr_branch"])
        gate.load_state_dict(ckpt["gate"])
        head.load_state_dict(ckpt["head"])
        optimizer.load_state_dict(ckpt["optimizer"])
        d_optimizer.load_state_dict(ckpt["d_optimizer"])
        step, elapsed_before = ckpt["step"], ckpt["elapsed"]
    lr_branch.to(device).train()
    gate.to(device).train()
    head.to(device)
    for opt in (optimizer, d_optimizer):  # resumed optimizer state follows the parameters
        for state in opt.state.values():
            for k, v in state.items():
                if isinstance(v, torch.Tensor):
                    state[k] = v.to(device)
    batch = cfg.batch_size
    n_hr = int(round(batch * cfg.hr_fraction)) if cfg.gate else 0
    n_online = int(round((batch - n_hr) * cfg.lr_online))  # fresh LR faces per update
    heights = np.array(data["heights"]) if n_online else None  # native heights to draw the fresh LR faces at
    teacher = None  # embeds the fresh LR faces for the gate (the bundle caches it for its own LR versions)
    if n_online and cfg.gate:
        teacher = DlibFaceModel.from_dat().to(device).eval().requires_grad_(False)
    print(f"train-adapt: config {cfg.name}: {len(pool)} sources ({len(identities)} identities), LR faces "
          f"'{'+'.join(kinds)}', gate {'on' if cfg.gate else 'off'}, feature weight {cfg.feature_weight}, "
          f"batch {batch} ({n_hr} HR{f', {n_online} fresh LR' if n_online else ''}), {cfg.steps} steps; "
          f"Model_LR {count_macs() / 1e6:.0f} M multiply-adds a face; "
          + (f"{torch.get_num_threads()} threads" if device.type == "cpu" else str(device))
          + (f"; resumed at step {step}" if ckpt else "")
          + (f"; Model_LR and gate from {init_from}" if init_from else ""), flush=True)

    start = time.time()
    run_info = {"config": dataclasses.asdict(cfg), "device": str(device), "threads": torch.get_num_threads(),
                "machine": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
                "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
                "torch": str(torch.__version__), "init_from": init_from}

    def checkpoint(step: int) -> None:
        elapsed = elapsed_before + time.time() - start
        save_checkpoint(out / "last.pt", {
            "kind": "adapt", "config": dataclasses.asdict(cfg), "lr_branch": lr_branch.state_dict(),
            "gate": gate.state_dict(), "head": head.state_dict(), "optimizer": optimizer.state_dict(),
            "d_optimizer": d_optimizer.state_dict(), "step": step, "elapsed": elapsed,
            "identities": identities, "torch_version": str(torch.__version__), "init_from": init_from})
        (out / "run.json").write_text(json.dumps({**run_info, "step": step, "wall_seconds": round(elapsed, 1)},
                                                 indent=2) + "\n")

    metrics = MetricsLog(out / "metrics.csv", METRIC_FIELDS)
    zeros, ones = torch.zeros(batch, 1, device=device), torch.ones(batch, 1, device=device)
    # the teacher's (centred, unit) features of every source in the pool: the classes of the contrastive
    # feature supervision, and the source's position in it
    bank = F.normalize(torch.from_numpy(np.array(t_hr[pool])).to(device) - gate.center, dim=1)
    bank_labels = torch.from_numpy(labels_all[pool]).to(device)
    position = np.full(len(labels_all), -1, np.int64)
    position[pool] = np.arange(len(pool))

    def tensor(a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(a)).to(device)

    if cfg.gate and step == 0 and cfg.d_warmup_steps and not init_from:
        warm_up_discriminator(gate, pool, t_hr, lr_sets, cfg, device)
    lr_now = 0.0  # of the latest update, for metrics.csv

    def train_step(step: int) -> tuple[dict, dict]:
        nonlocal lr_now
        rng = step_generator(cfg.seed, 7, step)
        idx = pool[torch.randint(len(pool), (batch,), generator=rng).numpy()]
        order = np.argsort(idx[n_hr:])  # sorted reads from the memory maps; order inside a batch is free
        idx = np.concatenate([idx[:n_hr], idx[n_hr:][order]])
        kind_of = lr_sets.draw(batch - n_hr, rng)
        pixels = np.concatenate([hr_images[idx[:n_hr]], lr_sets.images(idx[n_hr:], kind_of)])
        t_lr = lr_sets.teacher(idx[n_hr:], kind_of)  # the teacher's features of the LR faces (the gate's input)
        if n_online:  # the first n_online LR faces made afresh
            fresh = slice(n_hr, n_hr + n_online)
            g = np.random.default_rng([cfg.seed, 13, step])
            pixels[fresh] = fresh_lr(hr_images[idx[fresh]], heights[g.integers(len(heights), size=n_online)], g)
        x = tensor(pixels).permute(0, 3, 1, 2).float() / 255.0
        if teacher is not None:
            with torch.no_grad():
                t_lr = np.array(t_lr)
                t_lr[:n_online] = teacher(x[fresh] * 2 - 1).cpu().numpy()
        if cfg.photometric > 0:  # LR inputs only
            x[n_hr:] = photometric(x[n_hr:], cfg.photometric, rng)
        x = x * 2 - 1
        target = tensor(t_hr[idx])
        if distill is not None:  # the LR faces' targets: the distilled model's features of the same faces
            t_student = torch.from_numpy(distill["lr"].teacher(idx[n_hr:], kind_of)).to(device)
            keep = slice(n_online, None)  # fresh LR faces have none cached: theirs stays the teacher's
            target[n_hr:][keep] = t_student[keep]
        y = tensor(labels_all[idx])
        lr_now = learning_rate(cfg.lr, step, cfg.steps, cfg.warmup_steps)
        for group in optimizer.param_groups:
            group["lr"] = lr_now * group["lr_scale"]

        f_lr = lr_branch(x)
        if cfg.gate:
            f_hr = tensor(np.concatenate([t_hr[idx[:n_hr]], t_lr]))
            # D_LR's parameters take part in the forward pass only when the task losses also train the gate
            gate.discriminator.requires_grad_(cfg.gate_task_weight > 0)
            parts = gate(f_hr, f_lr)
            fused, w = parts["fused"], parts["w"]
        else:
            f_hr, fused, w = None, f_lr, None
        # feature supervision: squared Euclidean distance in dlib's own space (translation invariant, so the
        # descriptors' large common component does not drown the part that tells people apart)
        dist2 = (fused - target).pow(2).sum(1)
        feat = dist2.mean()
        loss = cfg.feature_weight * feat
        centred = fused - gate.center
        cos = F.cosine_similarity(centred, target - gate.center, dim=1)
        contrast = torch.zeros((), device=device)
        if cfg.contrast_weight > 0:
            # which of all the teacher's HR features is this face's source? (other faces of the same person
            # are not counted as wrong answers)
            logits = cfg.contrast_scale * F.normalize(centred, dim=1) @ bank.T
            pos = torch.from_numpy(position[idx]).to(device)
            same = (bank_labels[None, :] == y[:, None]) & (y[:, None] >= 0)
            same[torch.arange(len(pos)), pos] = False
            contrast = F.cross_entropy(logits.masked_fill(same, float("-inf")), pos)
            loss = loss + cfg.contrast_weight * contrast
        real_cls = real_distill = torch.zeros((), device=device)
        if real is not None:  # real captures: tell their people apart (the target domain itself)
            ridx = np.sort(torch.randint(len(real["labels"]), (cfg.real_per_batch,), generator=rng).numpy())
            xr = tensor(real["images"][ridx]).permute(0, 3, 1, 2).float() / 127.5 - 1
            f_real = lr_branch(xr)
            real_cls, _ = margin_loss(real["head"], f_real - gate.center, tensor(real["labels"][ridx]))
            loss = loss + cfg.real_weight * real_cls
            if distill is not None and cfg.distill_real_weight > 0 and cfg.gate:
                fused_r = gate(tensor(data["teacher_real"][ridx]), f_real)["fused"]
                real_distill = (fused_r - tensor(distill["real"][ridx])).pow(2).sum(1).mean()
                loss = loss + cfg.distill_real_weight * real_distill
        has_id = y >= 0
        cls, acc = (margin_loss(head["hr"], centred[has_id], y[has_id]) if bool(has_id.any())
                    else (torch.zeros((), device=device), torch.zeros((), device=device)))
        loss = loss + cfg.cls_weight * cls
        d_task = None
        if cfg.gate and cfg.gate_task_weight > 0:  # what the task losses ask of W (through D_LR's weights)
            d_params = list(gate.discriminator.parameters())
            d_task = torch.autograd.grad(loss, d_params, retain_graph=True, allow_unused=True)
        adv = torch.zeros((), device=device)
        if cfg.gate and cfg.adv_weight > 0:
            adv = F.binary_cross_entropy_with_logits(gate.discriminator(centred[n_hr:]), zeros[n_hr:])
            loss = loss + cfg.adv_weight * adv
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

        loss_d = torch.zeros((), device=device)
        if cfg.gate:  # D_LR: teacher features of HR faces -> 0, of LR faces -> 1, fused LR features -> 1
            gate.discriminator.requires_grad_(True)
            sel = idx[n_hr:]
            d_in = torch.cat([tensor(t_hr[sel]), tensor(t_lr),
                              fused[n_hr:].detach()]) - gate.center
            logits = gate.discriminator(d_in)
            m = len(sel)
            loss_d = (F.binary_cross_entropy_with_logits(logits[:m], zeros[:m])
                      + (1 - cfg.d_fused_weight) * F.binary_cross_entropy_with_logits(logits[m:2 * m], ones[:m])
                      + cfg.d_fused_weight * F.binary_cross_entropy_with_logits(logits[2 * m:], ones[:m]))
            d_optimizer.zero_grad(set_to_none=True)
            loss_d.backward()
            if d_task is not None:
                for p, g in zip(d_params, d_task):
                    if g is not None:
                        p.grad.add_(g, alpha=cfg.gate_task_weight)
            d_optimizer.step()
        tensors = {"loss": loss, "feat": feat, "contrast": contrast, "real_cls": real_cls, "real_distill": real_distill,
                   "feat_lr": dist2[n_hr:].mean(), "cos_lr": cos[n_hr:].mean(),
                   "cls": cls, "acc": acc, "adv": adv, "loss_d": loss_d}
        if w is not None:
            tensors.update({"w_lr": w[n_hr:].mean(), **({"w_hr": w[:n_hr].mean()} if n_hr else {})})
        return {"lr": f"{lr_now:.3g}"}, tensors

    return fit(train_step, prog="train-adapt", step=step, stop_at=cfg.steps, total_steps=cfg.steps,
               log_every=cfg.log_every, metrics=metrics, desc="adapt", max_minutes=args.max_minutes,
               save_every_minutes=cfg.save_every_minutes, checkpoint=checkpoint,
               report=lambda last: (
                   f"loss {last['loss']:.4f} feat_lr {last['feat_lr']:.4f} contrast {last['contrast']:.3f} "
                   f"real {last['real_cls']:.3f} cls {last['cls']:.3f} acc {last['acc']:.3f}"
                   + (f" W_hr {last.get('w_hr', float('nan')):.3f} W_lr {last['w_lr']:.3f}" if cfg.gate else "")),
               outputs=lambda step: f"; {out / 'last.pt'}",
               start=start, elapsed_before=elapsed_before, images_per_step=batch, time_format=".1f")


if __name__ == "__main__":
    sys.exit(main())
