"""Train the feature adaption network (Algorithm 2): Model_MR = Model_HR + Model_LR + translation gate.

    lrface train-ran --hr DIR --lr-dir runs/synth-hr-train --hr-ckpt runs/embedder_hr/last.pt \
        --lr-ckpt runs/embedder_lr/last.pt --out runs/ran_base [--config ran_base] ...

Each step takes B HR faces and, for each, an LR version: one of its MR-GAN-synthesized variants from --lr-dir
(`<rel without extension>_<k>.<ext>`, the `lrface augment` layout), or, for `bicubic_fraction` of the pairs and
for faces without variants, a bicubic down/up-sampled copy at a random height. Both go through Model_MR:

- probabilistic supervision: margin cross-entropy on the fused feature of the HR face and of the LR face;
- feature supervision (cosine / L2 / Euclidean, `feature_loss`): the fused feature of the LR face towards the
  HR branch's feature of its HR face, added to the loss on every `feature_every`-th update and not otherwise
  (`feat_applied` in metrics.csv);
- adversarial: the fused feature of the LR face should look "HR" to the low-resolution feature discriminator
  D_LR, which is trained in its own update on HR-branch features of HR faces (0) and of LR faces (1) and on
  fused features of LR faces (1). D_LR's output on the HR-branch feature is the gate weight W.

metrics.csv logs W (mean over HR inputs, LR inputs and all) and the LR classification accuracy every step;
fig3_w_and_lr_acc.png plots them over training (the paper's Fig. 3).
"""
from __future__ import annotations

import argparse
import csv
import dataclasses
import re
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from lrface.models.backbones import count_parameters, get_model
from lrface.models.ran import ModelMR
from lrface.training.common import (MetricsLog, add_run_flags, epoch_order, epoch_plan, fit, load_checkpoint,
                             load_typed_config, plan_banner, resolve_config, resume_checkpoint, save_checkpoint,
                             set_learning_rate, setup_device, step_generator, to_device_uint8)
from lrface.training.configs.ran_base import RANConfig
from lrface.core.files import list_images
from lrface.training.data import load_face_folder
from lrface.training.losses import MarginHead, feature_loss, margin_loss
from lrface.training.train_embedder import (bicubic_degrade, build_optimizer, export_embedding_module, gather,
                                     learning_rate, param_groups)

METRIC_FIELDS = ["step", "epoch", "time", "lr", "loss", "cls_hr", "cls_lr", "acc_hr", "acc_lr", "feat_dist",
                 "feat_applied", "feature_updates", "adv_g", "loss_d", "w_hr", "w_lr", "w_mean", "bicubic_frac",
                 "images_per_s"]
FIG3_NAME = "fig3_w_and_lr_acc.png"
_VARIANT = re.compile(r"^(.*)_(\d+)$")


def feature_supervision_applies(update: int, every: int) -> bool:
    """Feature supervision joins update number `update` (1-based) when it is a multiple of `every` (0: never)."""
    return every > 0 and update % every == 0


# ---------------------------------------------------------------------------------------------------------------
# data

def source_stem(lr_rel: str) -> str | None:
    """`A/A_0001_3.png` -> `A/A_0001` (the HR face it was synthesized from); None without a `_<k>` suffix."""
    match = _VARIANT.match(lr_rel.rsplit(".", 1)[0])
    return match.group(1) if match else None


def load_variants(lr_dir: str, hr_paths: list[str], limit: int | None, cache_dir: str | None
                  ) -> tuple[np.ndarray, list[list[int]], int]:
    """Synthesized LR faces matched to HR faces: (images, variants[hr_index] = LR indices, unmatched count)."""
    hr_index = {p.rsplit(".", 1)[0]: i for i, p in enumerate(hr_paths)}
    root = Path(lr_dir)
    load_limit = None
    if limit is not None:  # read only up to the last variant of a loaded HR face (files are read in sorted order)
        rel = [p.relative_to(root).as_posix() for p in list_images(root)]
        hits = [i for i, r in enumerate(rel) if source_stem(r) in hr_index]
        load_limit = (hits[-1] + 1) if hits else 1
    folder = load_face_folder(root, limit=load_limit, cache_dir=cache_dir)
    variants: list[list[int]] = [[] for _ in hr_paths]
    unmatched = 0
    for j, rel in enumerate(folder.paths):
        i = hr_index.get(source_stem(rel))
        if i is None:
            unmatched += 1
        else:
            variants[i].append(j)
    return folder.images, variants, unmatched


def draw_lr_sources(variants: list[list[int]], index: torch.Tensor, bicubic_fraction: float,
                    rng: torch.Generator) -> torch.Tensor:
    """For each HR face in the batch, the LR variant to use, or -1 for an on-the-fly bicubic copy."""
    u = torch.rand(len(index), generator=rng).tolist()
    pick = torch.rand(len(index), generator=rng).tolist()
    out = []
    for i, a, b in zip(index.tolist(), u, pick):
        options = variants[i]
        out.append(options[int(b * len(options))] if options and a >= bicubic_fraction else -1)
    return torch.tensor(out, dtype=torch.long)


# ---------------------------------------------------------------------------------------------------------------
# model

def build_model_mr(cfg: RANConfig, branches: dict) -> ModelMR:
    hr, lr = branches["hr"], branches["lr"]
    if hr["embedding_dim"] != lr["embedding_dim"]:
        raise SystemExit(f"train-ran: the HR branch's embedding has {hr['embedding_dim']} dimensions, the LR "
                         f"branch's {lr['embedding_dim']}; the gate needs them equal")
    return ModelMR(get_model(hr["network"], embedding_dim=hr["embedding_dim"]),
                   get_model(lr["network"], embedding_dim=lr["embedding_dim"]),
                   hr["embedding_dim"], cfg.translator_hidden, cfg.discriminator_hidden)


def export_onnx(ckpt: dict, out_path) -> Path:
    """Export a `ran` checkpoint's Model_MR as an embedder (face -> fused, L2-normalised embedding)."""
    if ckpt.get("kind") != "ran":
        raise ValueError(f"not a ran checkpoint (kind {ckpt.get('kind')!r})")
    cfg = RANConfig(**ckpt["config"])
    model = build_model_mr(cfg, ckpt["branches"])
    model.load_state_dict(ckpt["model"])
    model_id = f"{cfg.name}-{ckpt['branches']['hr']['network']}-step{ckpt.get('step', 0)}"
    return export_embedding_module(model, model.dim, out_path, model_id, cfg.verify_threshold)


def plot_fig3(metrics_csv: Path, out_png: Path) -> None:
    """W (mean over LR and HR inputs) and LR accuracy over training, like the paper's Fig. 3."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with open(metrics_csv, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        return

    def column(name: str) -> np.ndarray:
        return np.array([float(r[name]) if r.get(name) not in (None, "") else np.nan for r in rows])

    steps = column("step")
    window = max(1, len(rows) // 50)

    def smooth(v: np.ndarray) -> np.ndarray:
        if window == 1:
            return v
        kernel = np.ones(window) / window
        return np.convolve(np.nan_to_num(v), kernel, mode="same")

    fig, ax_w = plt.subplots(figsize=(7, 4), dpi=120)
    ax_w.plot(steps, smooth(column("w_lr")), color="tab:blue", label="W, LR inputs")
    ax_w.plot(steps, smooth(column("w_hr")), color="tab:blue", linestyle="--", label="W, HR inputs")
    ax_w.set_xlabel("update")
    ax_w.set_ylabel("gate weight W (mean)")
    ax_w.set_ylim(-0.02, 1.02)
    ax_acc = ax_w.twinx()
    ax_acc.plot(steps, smooth(column("acc_lr")), color="tab:red", label="LR accuracy (train batch)")
    ax_acc.set_ylabel("LR accuracy")
    ax_acc.set_ylim(-0.02, 1.02)
    lines = ax_w.get_lines() + ax_acc.get_lines()
    ax_w.legend(lines, [line.get_label() for line in lines], loc="center right", fontsize=8)
    ax_w.set_title("Translation gate weight W and LR accuracy during adaption")
    fig.tight_layout()
    tmp = out_png.with_name(out_png.stem + ".tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    tmp.replace(out_png)


# ---------------------------------------------------------------------------------------------------------------
# training

def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="lrface train-ran", description=__doc__.split("\n\n")[0])
    p.add_argument("--hr", required=True, help="HR faces, folder per identity (the HR training folder)")
    p.add_argument("--lr-dir", help="MR-GAN-synthesized LR versions of --hr (`lrface augment` output); without it "
                                    "every LR input is a bicubic copy")
    p.add_argument("--hr-ckpt", help="Model_HR checkpoint (train-embedder --mode hr); required unless resuming")
    p.add_argument("--lr-ckpt", help="Model_LR checkpoint (train-embedder --mode lr); default: a copy of Model_HR")
    p.add_argument("--config", default="ran_base", help="lrface/training/configs/NAME.py (default ran_base)")
    p.add_argument("--out", required=True, help="run directory: last.pt, metrics.csv, " + FIG3_NAME)
    add_run_flags(p, max_steps_help="stop (and save) after this many updates in total",
                  max_minutes_help="stop cleanly (checkpoint + figure) after this much wall time",
                  batch_help="HR/LR pairs per update",
                  limit_help="load only the first N HR images (and their LR variants)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    device, use_amp = setup_device(args)

    ckpt = resume_checkpoint(out, args.resume, "ran", "train-ran")
    if ckpt is not None:
        base = RANConfig(**ckpt["config"])
    else:
        if not args.hr_ckpt:
            raise SystemExit("train-ran: --hr-ckpt (Model_HR) is required for a new run")
        base = load_typed_config(args.config, RANConfig, "train-ran")
    cfg = resolve_config(args, base)

    # data
    t0 = time.time()
    hr_folder = load_face_folder(args.hr, limit=args.limit, cache_dir=args.cache_dir)
    identities = hr_folder.identities
    if ckpt is not None and ckpt["identities"] != identities:
        raise SystemExit("train-ran: the data's identities differ from the checkpoint's (other --hr/--limit?)")
    variants: list[list[int]] = [[] for _ in range(len(hr_folder))]
    lr_images = None
    if args.lr_dir:
        lr_np, variants, unmatched = load_variants(args.lr_dir, hr_folder.paths, args.limit, args.cache_dir)
        lr_images = to_device_uint8(lr_np, device)
        if unmatched:
            print(f"train-ran: {unmatched} files in --lr-dir match no HR face (ignored)", flush=True)
    with_variants = sum(1 for v in variants if v)
    hr_images = to_device_uint8(hr_folder.images, device)
    labels = torch.from_numpy(hr_folder.labels).to(device)
    n = len(hr_folder)
    batch_size, steps_per_epoch, total_steps, stop_at = epoch_plan(n, cfg.batch_size, cfg.epochs, args.max_steps)

    # model: branches from the Model_HR / Model_LR checkpoints (or from our own checkpoint when resuming)
    head_init = None
    if ckpt is not None:
        branches = ckpt["branches"]
        model = build_model_mr(cfg, branches)
        model.load_state_dict(ckpt["model"])
    else:
        hr_ckpt = load_checkpoint(args.hr_ckpt, "embedder")
        lr_ckpt = load_checkpoint(args.lr_ckpt, "embedder") if args.lr_ckpt else hr_ckpt
        if not args.lr_ckpt:
            print("train-ran: no --lr-ckpt; the LR branch starts as a copy of Model_HR", flush=True)
        branches = {name: {"network": c["config"]["network"], "embedding_dim": c["config"]["embedding_dim"],
                           "source": str(path)}
                    for name, c, path in (("hr", hr_ckpt, args.hr_ckpt), ("lr", lr_ckpt, args.lr_ckpt or args.hr_ckpt))}
        model = build_model_mr(cfg, branches)
        model.hr_branch.load_state_dict(hr_ckpt["model"])
        model.lr_branch.load_state_dict(lr_ckpt["model"])
        if hr_ckpt.get("identities") == identities:  # Model_HR's class centres are a head start
            head_init = hr_ckpt["head"]
    model = model.to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    head = MarginHead(len(identities), model.dim, cfg.margin, cfg.scale, cfg.margin_m).to(device)
    if head_init is not None:
        head.load_state_dict(head_init)
    if cfg.freeze_hr_branch:
        model.hr_branch.requires_grad_(False)
    discriminator = model.gate.discriminator
    trainable = [model.lr_branch, model.gate.translator, head] + ([] if cfg.freeze_hr_branch else [model.hr_branch])
    optimizer = build_optimizer(cfg.optimizer, param_groups(*trainable), cfg.lr, cfg.momentum, cfg.weight_decay)
    d_optimizer = torch.optim.Adam(discriminator.parameters(), lr=cfg.d_lr, betas=(0.5, 0.999))
    step, feature_updates, elapsed_before = 0, 0, 0.0
    if ckpt is not None:
        head.load_state_dict(ckpt["head"])
        optimizer.load_state_dict(ckpt["optimizer"])
        d_optimizer.load_state_dict(ckpt["d_optimizer"])
        step, feature_updates, elapsed_before = ckpt["step"], ckpt["feature_updates"], ckpt.get("elapsed", 0.0)
    print(f"train-ran: {n} HR faces of {len(identities)} identities, {with_variants} with synthesized LR variants, "
          f"loaded in {time.time() - t0:.1f}s; config {cfg.name}: HR {branches['hr']['network']} + LR "
          f"{branches['lr']['network']} (D={model.dim}, {count_parameters(model) / 1e6:.2f} M params), feature loss "
          f"{cfg.feature_loss} every {cfg.feature_every} updates, batch {batch_size} pairs, "
          + plan_banner(steps_per_epoch, total_steps, device, use_amp, step if ckpt is not None else None), flush=True)

    start = time.time()

    def checkpoint(step: int) -> None:
        save_checkpoint(out / "last.pt", {
            "kind": "ran", "config": dataclasses.asdict(cfg), "branches": branches, "model": model.state_dict(),
            "head": head.state_dict(), "optimizer": optimizer.state_dict(), "d_optimizer": d_optimizer.state_dict(),
            "step": step, "epoch": step // steps_per_epoch, "steps_per_epoch": steps_per_epoch,
            "feature_updates": feature_updates, "identities": identities, "num_images": n,
            "elapsed": elapsed_before + time.time() - start, "torch_version": str(torch.__version__),
        })
        plot_fig3(out / "metrics.csv", out / FIG3_NAME)

    metrics = MetricsLog(out / "metrics.csv", METRIC_FIELDS)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp)
    warmup_steps = int(cfg.warmup_epochs * steps_per_epoch)
    model.train()
    if cfg.freeze_hr_branch:
        model.hr_branch.eval()  # frozen BatchNorm statistics too
    zeros = torch.zeros(batch_size, 1, device=device)
    ones = torch.ones(batch_size, 1, device=device)
    epoch, lr_now = 0, 0.0  # of the latest update, for the log line

    def train_step(step: int) -> tuple[dict, dict]:
        nonlocal epoch, lr_now, feature_updates
        # --- batch: B HR faces and an LR version of each (synthesized variant or bicubic copy)
        epoch, position = divmod(step, steps_per_epoch)
        index = epoch_order(cfg.seed, epoch, n)[position * batch_size:(position + 1) * batch_size]
        rng = step_generator(cfg.seed, 3, step)
        flip = (torch.rand(batch_size, generator=rng) < 0.5) & torch.tensor(cfg.flip)
        heights = torch.randint(cfg.bicubic_min_height, cfg.bicubic_max_height + 1, (batch_size,), generator=rng)
        source = draw_lr_sources(variants, index, cfg.bicubic_fraction, rng) if lr_images is not None \
            else torch.full((batch_size,), -1, dtype=torch.long)
        x_hr = gather(hr_images, index, flip)
        x_lr = torch.empty_like(x_hr)
        synth = (source >= 0).nonzero().squeeze(1)
        bicubic = (source < 0).nonzero().squeeze(1)
        if len(synth):
            x_lr[synth.to(device)] = gather(lr_images, source[synth], flip[synth])
        if len(bicubic):
            x_lr[bicubic.to(device)] = bicubic_degrade(x_hr[bicubic.to(device)], heights[bicubic])
        x = torch.cat([x_hr, x_lr])
        if device.type == "cuda":
            x = x.contiguous(memory_format=torch.channels_last)
        y = labels[index.to(device)]

        lr_now = learning_rate(cfg.lr, step, total_steps, warmup_steps, cfg.schedule, cfg.milestones)
        set_learning_rate(optimizer, lr_now)

        # --- Model_MR forward; D_LR only gives W here (its own update follows)
        discriminator.requires_grad_(False)
        with autocast:
            with torch.set_grad_enabled(not cfg.freeze_hr_branch):
                f_hr = model.hr_branch(x)
            f_lr = model.lr_branch(x)
        gate = model.gate(f_hr.float(), f_lr.float())
        fused, w = gate["fused"], gate["w"]
        f_hr = f_hr.float()

        # --- probabilistic supervision on HR and LR inputs
        cls_hr, acc_hr = margin_loss(head, fused[:batch_size], y)
        cls_lr, acc_lr = margin_loss(head, fused[batch_size:], y)
        loss = cls_hr + cfg.lr_cls_weight * cls_lr
        # --- feature supervision, every `feature_every`-th update only
        update = step + 1
        applied = feature_supervision_applies(update, cfg.feature_every)
        target = f_hr[:batch_size].detach()
        if applied:
            feat_dist = feature_loss(cfg.feature_loss, fused[batch_size:], target)
            loss = loss + cfg.feature_weight * feat_dist
            feature_updates += 1
        else:
            with torch.no_grad():
                feat_dist = feature_loss(cfg.feature_loss, fused[batch_size:], target)
        # --- adversarial: the MR feature of an LR face should look like an HR face's to D_LR
        adv_g = F.binary_cross_entropy_with_logits(discriminator(fused[batch_size:]), zeros)
        loss = loss + cfg.adv_weight * adv_g
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

        # --- D_LR update: HR-branch features of HR faces -> 0, of LR faces -> 1; fused LR features -> 1
        discriminator.requires_grad_(True)
        d_in = torch.cat([f_hr.detach(), fused[batch_size:].detach()])
        d_logits = discriminator(d_in)
        loss_d = (F.binary_cross_entropy_with_logits(d_logits[:batch_size], zeros)
                  + 0.5 * F.binary_cross_entropy_with_logits(d_logits[batch_size:2 * batch_size], ones)
                  + 0.5 * F.binary_cross_entropy_with_logits(d_logits[2 * batch_size:], ones))
        d_optimizer.zero_grad(set_to_none=True)
        loss_d.backward()
        d_optimizer.step()
        return ({"epoch": epoch, "lr": f"{lr_now:.6g}", "feat_applied": int(applied),
                 "feature_updates": feature_updates, "bicubic_frac": f"{len(bicubic) / batch_size:.3f}"},
                {"loss": loss, "cls_hr": cls_hr, "cls_lr": cls_lr, "acc_hr": acc_hr, "acc_lr": acc_lr,
                 "feat_dist": feat_dist, "adv_g": adv_g, "loss_d": loss_d, "w_hr": w[:batch_size].mean(),
                 "w_lr": w[batch_size:].mean(), "w_mean": w.mean()})

    return fit(train_step, prog="train-ran", step=step, stop_at=stop_at, total_steps=total_steps,
               log_every=cfg.log_every, metrics=metrics, desc="ran", max_minutes=args.max_minutes,
               save_every_minutes=cfg.save_every_minutes, checkpoint=checkpoint,
               report=lambda last: (
                   f"lr {lr_now:.4g} loss {last['loss']:.4f} acc_hr {last['acc_hr']:.3f} acc_lr {last['acc_lr']:.3f} "
                   f"W_hr {last['w_hr']:.3f} W_lr {last['w_lr']:.3f} feat {last['feat_dist']:.4f} "
                   f"loss_d {last['loss_d']:.3f}"),
               outputs=lambda step: f" ({feature_updates} with feature supervision); {out / 'last.pt'}, "
                                    f"{out / FIG3_NAME}",
               start=start, elapsed_before=elapsed_before, images_per_step=2 * batch_size)


if __name__ == "__main__":
    sys.exit(main())
