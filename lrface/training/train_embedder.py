"""Train a face model: Model_HR (`--mode hr`), the HR + bicubic baseline (`--mode hr_bicubic`) or Model_LR on
MR-GAN-synthesized LR faces (`--mode lr`).

    lrface train-embedder --hr DIR [--mode hr|hr_bicubic] --out runs/embedder_hr [--config embedder_base] ...
    lrface train-embedder --mode lr --lr-dir runs/synth-hr-train [--hr DIR] --out runs/embedder_lr ...

Every image lives on the device as uint8; each step gathers a batch, flips half of it, (hr_bicubic) replaces a
fraction by a bicubic down/up-sampled copy at a random LR height, and trains backbone + margin head with
cross-entropy. The batch order and augmentation of step k depend only on (seed, epoch, k), so a resumed run
sees the same batches as an uninterrupted one.

Also here, shared with `train_ran`: batch gathering, bicubic degradation, the learning-rate schedule, the
optimizer and the ONNX export of an embedding network (embedder contract, docs/ARCHITECTURE.md). Device setup,
seeding, checkpoints, the metrics log and progress output live in `lrface.training.common` (re-exported here).
"""
from __future__ import annotations

import argparse
import dataclasses
import inspect
import json
import math
import os
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from lrface.models.backbones import count_parameters, get_model
from lrface.core.face import FACE_HEIGHT, FACE_WIDTH, lr_width_for_height
from lrface.training.common import (MetricsLog, Progress, RunControl, add_run_flags, epoch_order,  # noqa: F401
                             epoch_plan, fit, load_checkpoint, load_typed_config, pick_device, plan_banner,
                             resolve_config, resume_checkpoint, save_checkpoint, set_learning_rate, setup_device,
                             step_generator, to_device_uint8)  # some only re-exported: older imports from here keep working
from lrface.training.configs.embedder_base import EmbedderConfig
from lrface.core.files import list_images
from lrface.training.data import load_face_folder
from lrface.training.losses import MarginHead, margin_loss

MODES = ("hr", "hr_bicubic", "lr")
METRIC_FIELDS = ["step", "epoch", "time", "lr", "loss", "acc", "bicubic_frac", "images_per_s"]


# ---------------------------------------------------------------------------------------------------------------
# device, batches, augmentation (shared with train_ran)

def gather(images_u8: torch.Tensor, index: torch.Tensor, flip: torch.Tensor) -> torch.Tensor:
    """A float batch in [-1, 1] from uint8 images; `flip` (bool [N]) mirrors those faces left-right."""
    x = images_u8[index.to(images_u8.device)].float().div_(127.5).sub_(1.0)
    flip = flip.to(x.device)
    return torch.where(flip[:, None, None, None], x.flip(3), x)


def bicubic_degrade(x: torch.Tensor, heights: torch.Tensor) -> torch.Tensor:
    """Down to each face's LR height (antialiased bicubic), back up to the 112x96 canvas (bicubic), in [-1, 1].

    `heights` is a CPU int tensor [N]; faces sharing a height are resized together.
    """
    out = x.clone()
    heights = heights.cpu()
    for h in torch.unique(heights).tolist():
        rows = (heights == h).nonzero().squeeze(1).to(x.device)
        small = F.interpolate(x[rows], size=(h, lr_width_for_height(h)), mode="bicubic", antialias=True,
                              align_corners=False)
        out[rows] = F.interpolate(small, size=(FACE_HEIGHT, FACE_WIDTH), mode="bicubic",
                                  align_corners=False).clamp_(-1.0, 1.0)
    return out


def learning_rate(base_lr: float, step: int, total_steps: int, warmup_steps: int, schedule: str,
                  milestones: tuple[float, ...]) -> float:
    """Linear warmup, then cosine to zero or 10x drops at the milestone fractions of training."""
    if warmup_steps > 0 and step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    if schedule == "cosine":
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return base_lr * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
    if schedule == "step":
        return base_lr * 0.1 ** sum(step >= f * total_steps for f in milestones)
    raise ValueError(f"unknown schedule {schedule!r}")


def build_optimizer(kind: str, groups: list[dict], lr: float, momentum: float, weight_decay: float):
    if kind == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=momentum, weight_decay=weight_decay)
    if kind == "adamw":
        return torch.optim.AdamW(groups, lr=lr, weight_decay=weight_decay)
    raise ValueError(f"unknown optimizer {kind!r}")


def param_groups(*modules: nn.Module) -> list[dict]:
    """Weight decay on conv/linear weights and class centres, none on BN/PReLU/biases."""
    decay, no_decay = [], []
    for module in modules:
        for p in module.parameters():
            if p.requires_grad:
                (decay if p.ndim > 1 else no_decay).append(p)
    return [{"params": decay}, {"params": no_decay, "weight_decay": 0.0}]


# ---------------------------------------------------------------------------------------------------------------
# outputs (shared with train_ran)

class NormalisedEmbedding(nn.Module):
    """An embedding network with the L2 normalisation inside the graph (the embedder ONNX contract)."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, face: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.net(face), dim=1)


def export_embedding_module(net: nn.Module, dim: int, out_path: str | os.PathLike, model_id: str,
                            verify_threshold: float, fp16_weights: bool = False) -> Path:
    """`face` [N, 3, 112, 96] -> `embedding` [N, D] (unit norm), opset 17, dynamic batch, + JSON sidecar;
    `fp16_weights`: weights stored as float16 (`onnx_weights.store_weights_fp16`), float32 arithmetic."""
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    module = NormalisedEmbedding(net).cpu().float().eval()
    dummy = torch.zeros(2, 3, FACE_HEIGHT, FACE_WIDTH)
    kwargs = dict(input_names=["face"], output_names=["embedding"], opset_version=17, do_constant_folding=True,
                  dynamic_axes={"face": {0: "batch"}, "embedding": {0: "batch"}})
    if "dynamo" in inspect.signature(torch.onnx.export).parameters:
        kwargs["dynamo"] = False
    tmp = out_path.with_name(out_path.name + ".tmp")
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
        torch.onnx.export(module, (dummy,), str(tmp), **kwargs)
    if fp16_weights:
        from lrface.training.onnx_weights import store_weights_fp16
        store_weights_fp16(tmp)
    os.replace(tmp, out_path)
    sidecar = {"model_id": model_id, "dim": int(dim), "verify_threshold": float(verify_threshold)}
    out_path.with_suffix(".json").write_text(json.dumps(sidecar, indent=2) + "\n")
    return out_path


def export_onnx(ckpt: dict, out_path: str | os.PathLike) -> Path:
    """Export an `embedder` checkpoint (as loaded by torch.load) per the embedder ONNX contract."""
    if ckpt.get("kind") != "embedder":
        raise ValueError(f"not an embedder checkpoint (kind {ckpt.get('kind')!r})")
    cfg = ckpt["config"]
    net = get_model(cfg["network"], embedding_dim=cfg["embedding_dim"])
    net.load_state_dict(ckpt["model"])
    model_id = f"{cfg['name']}-{ckpt.get('mode', 'hr')}-{cfg['network']}-step{ckpt.get('step', 0)}"
    return export_embedding_module(net, cfg["embedding_dim"], out_path, model_id, cfg["verify_threshold"])


# ---------------------------------------------------------------------------------------------------------------
# training

def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="lrface train-embedder", description=__doc__.split("\n\n")[0])
    p.add_argument("--mode", default="hr", choices=MODES,
                   help="hr: HR faces only (Model_HR); hr_bicubic: HR + bicubic LR augmentation (baseline); "
                        "lr: MR-GAN-synthesized LR faces (Model_LR)")
    p.add_argument("--hr", help="HR faces, folder per identity (required for hr and hr_bicubic)")
    p.add_argument("--lr-dir", help="--mode lr: synthesized LR faces (`lrface augment` output), folder per identity")
    p.add_argument("--config", default="embedder_base", help="lrface/training/configs/NAME.py (default embedder_base)")
    p.add_argument("--out", required=True, help="run directory: last.pt, metrics.csv")
    add_run_flags(p, max_steps_help="stop (and save) after this many steps in total",
                  max_minutes_help="stop cleanly (checkpoint) after this much wall time", batch_help=None,
                  limit_help="load only the first N images")
    args = p.parse_args(argv)
    if args.mode in ("hr", "hr_bicubic") and not args.hr:
        p.error(f"--mode {args.mode} needs --hr")
    if args.mode == "lr" and not args.lr_dir:
        p.error("--mode lr needs --lr-dir")
    return args


def identity_names(root: str | os.PathLike) -> list[str]:
    """The identity list `load_face_folder(root)` would produce, from a directory scan only."""
    root = Path(root)
    return sorted({p.relative_to(root).as_posix().split("/")[0] if len(p.relative_to(root).parts) > 1 else ""
                   for p in list_images(root)})


def load_training_faces(args: argparse.Namespace) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """uint8 images, labels and identity names for the chosen mode."""
    if args.mode == "lr":
        folder = load_face_folder(args.lr_dir, limit=args.limit, cache_dir=args.cache_dir)
        identities = folder.identities
        labels = folder.labels
        if args.hr:  # label with the HR folder's identity indices, so Model_LR's classes line up with Model_HR's
            identities = identity_names(args.hr)
            index = {name: i for i, name in enumerate(identities)}
            missing = sorted(set(folder.identities) - set(index))
            if missing:
                raise SystemExit(f"train-embedder: {len(missing)} identities of --lr-dir are not in --hr "
                                 f"(e.g. {missing[:3]})")
            labels = np.array([index[folder.identities[i]] for i in folder.labels], dtype=np.int64)
        return folder.images, labels, identities
    folder = load_face_folder(args.hr, limit=args.limit, cache_dir=args.cache_dir)
    return folder.images, folder.labels, folder.identities


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    device, use_amp = setup_device(args)

    ckpt = resume_checkpoint(out, args.resume, "embedder", "train-embedder")
    if ckpt is not None:
        if ckpt["mode"] != args.mode:
            raise SystemExit(f"train-embedder: {out / 'last.pt'} was trained with --mode {ckpt['mode']}, "
                             f"not {args.mode}")
        base = EmbedderConfig(**ckpt["config"])
    else:
        base = load_typed_config(args.config, EmbedderConfig, "train-embedder", "an")
    cfg = resolve_config(args, base)

    # data: every image as uint8 on the device
    t0 = time.time()
    images_np, labels_np, identities = load_training_faces(args)
    if ckpt is not None and ckpt["identities"] != identities:
        raise SystemExit("train-embedder: the data's identities differ from the checkpoint's (other --hr/--limit?)")
    images = to_device_uint8(images_np, device)
    labels = torch.from_numpy(labels_np).to(device)
    n = len(labels)
    # BatchNorm needs two faces; total_steps is the learning-rate schedule's length
    batch_size, steps_per_epoch, total_steps, stop_at = epoch_plan(n, cfg.batch_size, cfg.epochs, args.max_steps)

    # model, head, optimizer
    net = get_model(cfg.network, embedding_dim=cfg.embedding_dim).to(device)
    head = MarginHead(len(identities), cfg.embedding_dim, cfg.margin, cfg.scale, cfg.margin_m).to(device)
    if device.type == "cuda":
        net = net.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(cfg.optimizer, param_groups(net, head), cfg.lr, cfg.momentum, cfg.weight_decay)
    step, elapsed_before = 0, 0.0
    if ckpt is not None:
        net.load_state_dict(ckpt["model"])
        head.load_state_dict(ckpt["head"])
        optimizer.load_state_dict(ckpt["optimizer"])
        step, elapsed_before = ckpt["step"], ckpt.get("elapsed", 0.0)
    print(f"train-embedder: mode {args.mode}, {n} faces of {len(identities)} identities, loaded in "
          f"{time.time() - t0:.1f}s; config {cfg.name}: {cfg.network} ({count_parameters(net) / 1e6:.2f} M params, "
          f"D={cfg.embedding_dim}), {cfg.margin} s={cfg.scale} m={cfg.margin_m}, batch {batch_size}, "
          + plan_banner(steps_per_epoch, total_steps, device, use_amp, step if ckpt is not None else None), flush=True)

    start = time.time()

    def checkpoint(step: int) -> None:
        save_checkpoint(out / "last.pt", {
            "kind": "embedder", "mode": args.mode, "config": dataclasses.asdict(cfg),
            "model": net.state_dict(), "head": head.state_dict(), "optimizer": optimizer.state_dict(),
            "step": step, "epoch": step // steps_per_epoch, "steps_per_epoch": steps_per_epoch,
            "identities": identities, "num_images": n, "elapsed": elapsed_before + time.time() - start,
            "torch_version": str(torch.__version__),
        })

    metrics = MetricsLog(out / "metrics.csv", METRIC_FIELDS)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp)
    warmup_steps = int(cfg.warmup_epochs * steps_per_epoch)
    bicubic_prob = cfg.bicubic_prob if args.mode == "hr_bicubic" else 0.0
    net.train()
    head.train()
    epoch, lr_now = 0, 0.0  # of the latest update, for the log line

    def train_step(step: int) -> tuple[dict, dict]:
        nonlocal epoch, lr_now
        epoch, position = divmod(step, steps_per_epoch)
        order = epoch_order(cfg.seed, epoch, n)
        index = order[position * batch_size:(position + 1) * batch_size]
        rng = step_generator(cfg.seed, 2, step)
        flip = (torch.rand(len(index), generator=rng) < 0.5) & torch.tensor(cfg.flip)
        x = gather(images, index, flip)
        degrade = torch.rand(len(index), generator=rng) < bicubic_prob
        if degrade.any():
            heights = torch.randint(cfg.bicubic_min_height, cfg.bicubic_max_height + 1, (len(index),), generator=rng)
            rows = degrade.nonzero().squeeze(1)
            x[rows.to(device)] = bicubic_degrade(x[rows.to(device)], heights[rows])
        if device.type == "cuda":
            x = x.contiguous(memory_format=torch.channels_last)
        y = labels[index.to(device)]

        lr_now = learning_rate(cfg.lr, step, total_steps, warmup_steps, cfg.schedule, cfg.milestones)
        set_learning_rate(optimizer, lr_now)
        with autocast:
            emb = net(x)
        loss, acc = margin_loss(head, emb.float(), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return ({"epoch": epoch, "lr": f"{lr_now:.6g}", "bicubic_frac": f"{degrade.float().mean().item():.3f}"},
                {"loss": loss, "acc": acc})

    return fit(train_step, prog="train-embedder", step=step, stop_at=stop_at, total_steps=total_steps,
               log_every=cfg.log_every, metrics=metrics, desc=f"embedder-{args.mode}", max_minutes=args.max_minutes,
               save_every_minutes=cfg.save_every_minutes, checkpoint=checkpoint,
               report=lambda last: f"epoch {epoch} lr {lr_now:.4g} loss {last['loss']:.4f} acc {last['acc']:.3f}",
               outputs=lambda step: f" (epoch {step / steps_per_epoch:.2f}); {out / 'last.pt'}",
               start=start, elapsed_before=elapsed_before, images_per_step=batch_size)


if __name__ == "__main__":
    sys.exit(main())
