"""Train MR-GAN (Algorithm 1): turn HR faces into realistic LR captures of a chosen height, without pairs.

    lrface train-mrgan --hr DIR --lr DIR --config mrgan_base --out runs/mrgan [--steps N] [--resume] ...

Each step draws a target height h from the empirical height distribution of the real LR pool, a batch of real
LR faces whose native height is within `height_tolerance` px of h, and a batch of HR faces. The generator makes
captures of height h; they are quantized and brought back to the 112x96 canvas exactly as the real captures
were (`lr_to_canvas`) before any discriminator sees them. One discriminator update, then one generator update; the pixel loss
joins every `pixel_every`-th generator update.
"""
from __future__ import annotations

import argparse
import csv
import dataclasses
import math
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from lrface.core.face import FACE_HEIGHT, FACE_WIDTH, lr_width_for_height
from lrface.models.mrgan import (MRGANConfig, SensorStage, build_discriminators, build_generator, config_from_dict,
                          resample_to_lr)
from lrface.training.common import (Progress, add_data_flags, add_device_flags, apply_overrides, configure_torch,
                             load_typed_config, save_checkpoint, time_up, to_device_uint8)
from lrface.training.data import load_face_folder
from lrface.training.gan_losses import (attention_activation_loss, low_frequency_loss, lsgan_discriminator_loss,
                                 lsgan_generator_loss, pixel_loss)

METRIC_FIELDS = ["step", "time", "height", "loss_d", "loss_d_global", "loss_g", "loss_g_adv", "loss_attention",
                 "loss_pixel", "pixel_applied", "g_updates", "attention_mean"]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="lrface train-mrgan", description=__doc__.split("\n\n")[0])
    p.add_argument("--hr", required=True, help="HR faces, folder per identity (aligned 112x96)")
    p.add_argument("--lr", required=True, help="real LR captures (any size; native heights define the height distribution)")
    p.add_argument("--config", default="mrgan_base", help="lrface/training/configs/NAME.py (default mrgan_base)")
    p.add_argument("--out", required=True, help="run directory: last.pt, metrics.csv, samples_<step>.png")
    p.add_argument("--resume", action="store_true", help="continue from OUT/last.pt (models, optimizers, step, RNG)")
    p.add_argument("--steps", type=int, help="total generator steps (a resumed run continues up to this)")
    p.add_argument("--max-minutes", type=float, help="stop cleanly (checkpoint + samples) after this much wall time")
    p.add_argument("--batch-size", type=int)
    # `--lr` names the real LR folder, so the learning rate is `--learning-rate`
    p.add_argument("--learning-rate", type=float, help="Adam learning rate of generator and discriminators")
    p.add_argument("--seed", type=int)
    add_device_flags(p, amp_help="bf16 autocast on CUDA")
    p.add_argument("--ckpt-every", type=int)
    p.add_argument("--sample-every", type=int)
    p.add_argument("--log-every", type=int)
    add_data_flags(p, limit_help="load only the first N images of each folder")
    return p.parse_args(argv)


def resolve_config(args: argparse.Namespace, base: MRGANConfig) -> MRGANConfig:
    """The config with every command-line flag that was given written over it."""
    return apply_overrides(base, {
        "steps": args.steps, "batch_size": args.batch_size, "lr": args.learning_rate, "seed": args.seed,
        "amp": args.amp, "ckpt_every": args.ckpt_every, "sample_every": args.sample_every, "log_every": args.log_every,
    })


# ---------------------------------------------------------------------------------------------------------------
# data: uint8 NCHW tensors on the device, batches drawn with one seeded torch.Generator

def to_float(batch_u8: torch.Tensor) -> torch.Tensor:
    return batch_u8.float() / 127.5 - 1.0


def height_distribution(native_heights: np.ndarray) -> tuple[list[int], list[float]]:
    values, counts = np.unique(native_heights.astype(int), return_counts=True)
    return [int(v) for v in values], [float(c) for c in counts / counts.sum()]


class RealLRPool:
    """Real LR canvases bucketed by native height: `bucket(h)` are the indices within +-tolerance px of h."""

    def __init__(self, native_heights: np.ndarray, values: list[int], tolerance: int):
        heights = torch.from_numpy(native_heights.astype(np.int64))
        self.buckets = {h: torch.nonzero((heights - h).abs() <= tolerance).flatten() for h in values}

    def bucket(self, h: int) -> torch.Tensor:
        return self.buckets[h]


def sample_step(gen: torch.Generator, n_hr: int, pool: RealLRPool, height_values: torch.Tensor,
                height_weights: torch.Tensor, batch: int, z_dim: int) -> dict:
    """Everything random about one step, drawn in a fixed order from `gen` (on the CPU, so runs are reproducible
    on any device and a resumed run draws exactly what an uninterrupted one would)."""
    h = int(height_values[torch.multinomial(height_weights, 1, generator=gen)])
    candidates = pool.bucket(h)
    return {
        "height": h,
        "hr_index": torch.randint(n_hr, (batch,), generator=gen),
        "lr_index": candidates[torch.randint(len(candidates), (batch,), generator=gen)],
        "hr_flip": torch.rand(batch, generator=gen) < 0.5,
        "lr_flip": torch.rand(batch, generator=gen) < 0.5,
        "z": torch.randn(batch, z_dim, generator=gen),
        "noise": torch.randn(batch, SensorStage.NOISE_CHANNELS, FACE_HEIGHT, FACE_WIDTH, generator=gen),
    }


def gather(images_u8: torch.Tensor, index: torch.Tensor, flip: torch.Tensor) -> torch.Tensor:
    device = images_u8.device
    x = to_float(images_u8.index_select(0, index.to(device)))
    return torch.where(flip.to(device)[:, None, None, None], x.flip(3), x)


def quantize_8bit(x: torch.Tensor) -> torch.Tensor:
    """Round to the uint8 grid the real captures live on; straight-through for the gradient."""
    return x + (torch.round((x + 1) * 127.5) / 127.5 - 1 - x).detach()


def lr_to_canvas(lr: torch.Tensor, height: int) -> torch.Tensor:
    """The generator's padded `lr` output (one height for the whole batch) -> the capture h x round(h*96/112),
    quantized to 8 bits like a saved capture, -> back on the 112x96 canvas (bicubic, quantized) the way
    `to_canvas` brings a real capture there. Discriminators only ever see canvases made like this."""
    small = quantize_8bit(lr[:, :, :height, :lr_width_for_height(height)].float().clamp(-1, 1))
    up = F.interpolate(small, size=(FACE_HEIGHT, FACE_WIDTH), mode="bicubic", antialias=True, align_corners=False)
    return quantize_8bit(up.clamp(-1, 1))


def bottleneck(x: torch.Tensor, height: int) -> torch.Tensor:
    """A canvas taken to the LR size h with the generator's own resampler, then back to the canvas (the target
    of the pixel loss: the HR face as a plain capture of that height)."""
    scale = torch.full((len(x), 1), height / FACE_HEIGHT, device=x.device)
    return lr_to_canvas(resample_to_lr(x.float(), scale), height)


# ---------------------------------------------------------------------------------------------------------------
# outputs

class MetricsLog:
    """metrics.csv (appended on resume); rows are buffered as tensors and read back in one go (one device sync per flush)."""

    def __init__(self, path: Path, append: bool):
        self.path = path
        self.rows: list[tuple[dict, dict]] = []
        if not (append and path.exists()):
            with open(path, "w", newline="") as f:
                csv.writer(f).writerow(METRIC_FIELDS)

    def add(self, plain: dict, tensors: dict) -> None:
        self.rows.append((plain, {k: v.detach().float() for k, v in tensors.items()}))

    def flush(self) -> dict:
        if not self.rows:
            return {}
        keys = sorted({k for _, t in self.rows for k in t})
        stacked = torch.stack([torch.stack([t.get(k, torch.tensor(float("nan"), device=next(iter(t.values())).device))
                                            for k in keys]) for _, t in self.rows]).cpu().tolist()
        with open(self.path, "a", newline="") as f:
            w = csv.DictWriter(f, METRIC_FIELDS, extrasaction="ignore")
            for (plain, _), values in zip(self.rows, stacked):
                row = dict(plain)
                row.update({k: "" if math.isnan(v) else f"{v:.6g}" for k, v in zip(keys, values)})
                w.writerow(row)
        last = dict(zip(keys, stacked[-1]))
        last.update(self.rows[-1][0])
        self.rows = []
        return last


def sheet_heights(values: list[int], weights: list[float], n: int = 4) -> list[int]:
    """n heights spread over the LR height distribution (quantiles), smallest first."""
    cdf = np.cumsum(weights)
    qs = np.linspace(0.05, 0.95, n)
    return [int(values[min(int(np.searchsorted(cdf, q)), len(values) - 1)]) for q in qs]


@torch.no_grad()
def write_sample_sheet(path: Path, generator, hr: torch.Tensor, heights: list[int], z: torch.Tensor,
                       noise: torch.Tensor) -> None:
    """Rows: one HR face each; columns: the HR input, then one variant per height (own z), on the canvas."""
    tiles = [hr]
    for k, h in enumerate(heights):
        scale = torch.full((len(hr), 1), h / FACE_HEIGHT, device=hr.device)
        tiles.append(lr_to_canvas(generator(hr, z[k], scale, noise[k])["lr"], h))
    grid = torch.stack(tiles, 1).float()  # rows x cols x 3 x H x W
    grid = ((grid.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).cpu()
    rows, cols = grid.shape[:2]
    image = grid.permute(0, 3, 1, 4, 2).reshape(rows * FACE_HEIGHT, cols * FACE_WIDTH, 3).numpy()
    tmp = path.with_name(path.name + ".tmp.png")
    Image.fromarray(image, "RGB").save(tmp)
    os.replace(tmp, path)


# ---------------------------------------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    device = configure_torch(args.threads, args.device, "train-mrgan")

    ckpt = None
    if args.resume:
        if not (out / "last.pt").exists():
            raise SystemExit(f"train-mrgan: --resume but {out / 'last.pt'} does not exist")
        ckpt = torch.load(out / "last.pt", map_location="cpu", weights_only=True)
        if ckpt.get("kind") != "mrgan":
            raise SystemExit(f"train-mrgan: {out / 'last.pt'} is a {ckpt.get('kind')!r} checkpoint, not mrgan")
        base = config_from_dict(ckpt["config"])
    else:
        base = load_typed_config(args.config, MRGANConfig, "train-mrgan", "an")
    cfg = resolve_config(args, base)
    use_amp = cfg.amp and device.type == "cuda" and torch.cuda.is_bf16_supported()

    # data: every image as uint8 on the device
    t0 = time.time()
    hr_folder = load_face_folder(args.hr, limit=args.limit, cache_dir=args.cache_dir)
    lr_folder = load_face_folder(args.lr, limit=args.limit, cache_dir=args.cache_dir)
    hr_images = to_device_uint8(hr_folder.images, device)
    lr_images = to_device_uint8(lr_folder.images, device)
    if ckpt is not None:
        height_values, height_weights = ckpt["height_values"], ckpt["height_weights"]
    else:
        height_values, height_weights = height_distribution(lr_folder.native_heights)
    pool = RealLRPool(lr_folder.native_heights, height_values, cfg.height_tolerance)
    values_t = torch.tensor(height_values)
    weights_t = torch.tensor(height_weights, dtype=torch.float64)
    print(f"train-mrgan: {len(hr_folder)} HR faces, {len(lr_folder)} LR faces (heights {min(height_values)}-"
          f"{max(height_values)}), loaded in {time.time() - t0:.1f}s; config {cfg.name}, device {device}"
          f"{', bf16 autocast' if use_amp else ''}", flush=True)

    # models and optimizers (initial weights from the run seed)
    torch.manual_seed(cfg.seed)
    generator = build_generator(cfg).to(device)
    discriminators = build_discriminators(cfg).to(device)
    opt_g = torch.optim.Adam(generator.parameters(), lr=cfg.lr, betas=(cfg.beta1, cfg.beta2))
    opt_d = torch.optim.Adam(discriminators.parameters(), lr=cfg.lr, betas=(cfg.beta1, cfg.beta2))
    rng = torch.Generator().manual_seed(cfg.seed)
    step, g_updates, elapsed_before = 0, 0, 0.0
    if ckpt is not None:
        generator.load_state_dict(ckpt["generator"])
        discriminators.load_state_dict(ckpt["discriminators"])
        opt_g.load_state_dict(ckpt["opt_g"])
        opt_d.load_state_dict(ckpt["opt_d"])
        for opt in (opt_g, opt_d):  # a new --learning-rate on resume wins over the saved one
            for group in opt.param_groups:
                group["lr"] = cfg.lr
        rng.set_state(ckpt["rng"])
        step, g_updates, elapsed_before = ckpt["step"], ckpt["g_updates"], ckpt.get("elapsed", 0.0)
        print(f"train-mrgan: resumed {out / 'last.pt'} at step {step}", flush=True)

    # fixed faces, heights and z for the sample sheets (their own generator: sheets never disturb training)
    sheet_rng = torch.Generator().manual_seed(cfg.seed + 1)
    sheet_hr = to_float(hr_images[torch.randperm(len(hr_images), generator=sheet_rng)[:4].to(device)])
    sheet_h = sheet_heights(height_values, height_weights)
    sheet_z = torch.randn(len(sheet_h), len(sheet_hr), cfg.z_dim, generator=sheet_rng).to(device)
    sheet_noise = torch.randn(len(sheet_h), len(sheet_hr), SensorStage.NOISE_CHANNELS, FACE_HEIGHT, FACE_WIDTH,
                              generator=sheet_rng).to(device)

    def checkpoint() -> None:
        save_checkpoint(out / "last.pt", {
            "kind": "mrgan", "config": dataclasses.asdict(cfg), "generator": generator.state_dict(),
            "discriminators": discriminators.state_dict(), "opt_g": opt_g.state_dict(), "opt_d": opt_d.state_dict(),
            "step": step, "g_updates": g_updates, "elapsed": elapsed_before + time.time() - start,
            "rng": rng.get_state(), "height_values": height_values, "height_weights": height_weights,
            "torch_version": str(torch.__version__),
        })

    def samples() -> None:
        write_sample_sheet(out / f"samples_{step:06d}.png", generator, sheet_hr, sheet_h, sheet_z, sheet_noise)

    metrics = MetricsLog(out / "metrics.csv", append=ckpt is not None)  # a fresh run starts a fresh log
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp)
    progress = Progress(cfg.steps, step, "mrgan")
    start = time.time()
    start_step = step
    stopped_early = False
    while step < cfg.steps:
        # --- sample: target height, real LR faces of about that height, HR faces, random vectors
        draw = sample_step(rng, len(hr_images), pool, values_t, weights_t, cfg.batch_size, cfg.z_dim)
        h = draw["height"]
        hr = gather(hr_images, draw["hr_index"], draw["hr_flip"])
        real = gather(lr_images, draw["lr_index"], draw["lr_flip"])
        z = draw["z"].to(device)
        noise = draw["noise"].to(device)
        scale = torch.full((cfg.batch_size, 1), h / FACE_HEIGHT, device=device)

        # --- generate (the capture at height h), then onto the canvas the way the real captures got there
        with autocast:
            result = generator(hr, z, scale, noise)
        fake = lr_to_canvas(result["lr"], h)

        # --- discriminator update (one per generator update)
        discriminators.requires_grad_(True)
        opt_d.zero_grad(set_to_none=True)
        with autocast:
            real_logits = discriminators(real)
            fake_logits = discriminators(fake.detach())
        d_terms = {name: lsgan_discriminator_loss(real_logits[name], fake_logits[name]) for name in real_logits}
        loss_d = d_terms["global"] + sum(v for k, v in d_terms.items() if k != "global")
        loss_d.backward()
        opt_d.step()

        # --- generator update: adversarial (global + local) + attention activation (+ pixel every 5th update)
        g_updates += 1
        discriminators.requires_grad_(False)
        opt_g.zero_grad(set_to_none=True)
        with autocast:
            gen_logits = discriminators(fake)
        g_terms = {name: lsgan_generator_loss(v) for name, v in gen_logits.items()}
        loss_adv = cfg.lambda_adv * g_terms["global"] + cfg.lambda_local_adv * sum(
            (v for k, v in g_terms.items() if k != "global"), torch.zeros((), device=device))
        loss_attention = attention_activation_loss(result["attention"])
        loss_g = loss_adv
        if cfg.use_attention and cfg.use_attention_loss:
            loss_g = loss_g + cfg.lambda_attention * loss_attention
        pixel_applied = g_updates % cfg.pixel_every == 0
        target = None
        if pixel_applied or cfg.lambda_low_freq > 0:
            with torch.no_grad():
                target = bottleneck(hr, h)
        tensors = {}
        if pixel_applied:
            # on the capture before the sensor stage: the optics must keep the face; colour, noise and the
            # camera's processing are left to the adversarial terms
            loss_pixel = pixel_loss(lr_to_canvas(result["lr_optics"], h), target)
            loss_g = loss_g + cfg.lambda_pixel * loss_pixel
            tensors["loss_pixel"] = loss_pixel
        if cfg.lambda_low_freq > 0:
            loss_g = loss_g + cfg.lambda_low_freq * low_frequency_loss(fake, target)
        loss_g.backward()
        opt_g.step()
        step += 1

        # --- bookkeeping
        elapsed = time.time() - start
        tensors.update(loss_d=loss_d, loss_d_global=d_terms["global"], loss_g=loss_g, loss_g_adv=loss_adv,
                       loss_attention=loss_attention, attention_mean=result["attention"].mean())
        metrics.add({"step": step, "time": f"{elapsed_before + elapsed:.2f}", "height": h,
                     "pixel_applied": int(pixel_applied), "g_updates": g_updates}, tensors)
        progress.update()
        if step % cfg.log_every == 0 or step == cfg.steps:
            last = metrics.flush()
            line = (f"step {step}/{cfg.steps} h={h} loss_d={last['loss_d']:.4f} loss_g={last['loss_g']:.4f} "
                    f"attention={last['attention_mean']:.3f} {elapsed / max(step - start_step, 1):.3f}s/step")
            progress.report(line, postfix=line.split(" ", 2)[2])
        if time_up(args.max_minutes, elapsed):
            print(f"train-mrgan: --max-minutes {args.max_minutes} reached at step {step}", flush=True)
            stopped_early = True
            break
        if step < cfg.steps:  # the final checkpoint and sheet are written after the loop
            if step % cfg.ckpt_every == 0:
                metrics.flush()
                checkpoint()
            if step % cfg.sample_every == 0:
                samples()

    progress.close()
    metrics.flush()
    checkpoint()
    samples()
    print(f"train-mrgan: {'stopped' if stopped_early else 'done'} at step {step}; {out / 'last.pt'}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
