"""Pieces shared by the trainers (`train_embedder`, `train_ran`, `train_mrgan`): device / threads / bf16 setup,
seeded per-step generators, atomic checkpoints, the metrics log, progress output, common command-line flags and
the training loop itself (`fit`, with its stop / periodic-save bookkeeping)."""
from __future__ import annotations

import argparse
import csv
import dataclasses
import math
import os
import sys
import time
from pathlib import Path
from typing import Callable, NamedTuple

import numpy as np
import torch

from lrface.training.configs import load_config

# ---------------------------------------------------------------------------------------------------------------
# device, threads, autocast


def pick_device(name: str, prog: str | None = None) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise SystemExit(f"{prog + ': ' if prog else ''}--device cuda but CUDA is not available")
    return torch.device(name)


def configure_torch(threads: int | None, device_name: str, prog: str | None = None) -> torch.device:
    """Torch CPU threads, the device, and on CUDA cuDNN autotuning and TF32 matmuls."""
    if threads:
        torch.set_num_threads(threads)
    device = pick_device(device_name, prog)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    return device


def setup_device(args: argparse.Namespace) -> tuple[torch.device, bool]:
    """Threads, cuDNN autotuning; returns the device and whether bf16 autocast is on (CUDA only)."""
    device = configure_torch(args.threads, args.device)
    use_amp = False
    if device.type == "cuda":
        use_amp = (args.amp is not False) and torch.cuda.is_bf16_supported()
    elif args.amp:
        print("note: --amp is for CUDA (bf16 autocast); training in float32 on the CPU", flush=True)
    return device, use_amp


def to_device_uint8(images: np.ndarray, device: torch.device) -> torch.Tensor:
    """N x H x W x 3 uint8 array -> N x 3 x H x W uint8 tensor on the device."""
    return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).contiguous().to(device)


# ---------------------------------------------------------------------------------------------------------------
# seeding: batches depend only on (seed, epoch, step), not on where a run was resumed

def step_generator(seed: int, *keys: int) -> torch.Generator:
    """A CPU generator that depends only on (seed, keys): batches do not depend on where a run was resumed."""
    return torch.Generator().manual_seed(int(np.random.SeedSequence([seed, *keys]).generate_state(1)[0]))


def epoch_order(seed: int, epoch: int, n: int) -> torch.Tensor:
    return torch.randperm(n, generator=step_generator(seed, 1, epoch))


# ---------------------------------------------------------------------------------------------------------------
# configs and command-line flags

def apply_overrides(base, overrides: dict):
    """`base` (a config dataclass) with every override that is not None written over it."""
    return dataclasses.replace(base, **{k: v for k, v in overrides.items() if v is not None})


def resolve_config(args: argparse.Namespace, base):
    """The epoch-based trainers' config (train_embedder, train_ran) with the given flags written over it."""
    return apply_overrides(base, {"epochs": args.epochs, "batch_size": args.batch_size, "lr": args.learning_rate,
                                  "seed": args.seed, "log_every": args.log_every})


def load_typed_config(name: str, cls: type, prog: str, article: str = "a"):
    """lrface/training/configs/NAME.py, which must hold a `cls` config."""
    cfg = load_config(name)
    if not isinstance(cfg, cls):
        raise SystemExit(f"{prog}: config {name!r} is not {article} {cls.__name__}")
    return cfg


def add_device_flags(p: argparse.ArgumentParser, amp_help: str = "bf16 autocast (CUDA only; default on there)") -> None:
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--amp", action=argparse.BooleanOptionalAction, default=None, help=amp_help)


def add_data_flags(p: argparse.ArgumentParser, limit_help: str) -> None:
    p.add_argument("--limit", type=int, help=limit_help)
    p.add_argument("--threads", type=int, help="torch CPU threads")
    p.add_argument("--cache-dir", help="cache loaded folders as .npz here")


def add_run_flags(p: argparse.ArgumentParser, *, max_steps_help: str, max_minutes_help: str,
                  batch_help: str | None, limit_help: str) -> None:
    """The flags of the epoch-based trainers after --out: --resume ... --cache-dir."""
    p.add_argument("--resume", action="store_true", help="continue from OUT/last.pt when it exists (else start)")
    p.add_argument("--epochs", type=int)
    p.add_argument("--max-steps", type=int, help=max_steps_help)
    p.add_argument("--max-minutes", type=float, help=max_minutes_help)
    p.add_argument("--batch-size", type=int, help=batch_help)
    p.add_argument("--lr", "--learning-rate", dest="learning_rate", type=float, help="peak learning rate")
    p.add_argument("--seed", type=int)
    add_device_flags(p)
    p.add_argument("--log-every", type=int)
    add_data_flags(p, limit_help)


# ---------------------------------------------------------------------------------------------------------------
# checkpoints

def save_checkpoint(path: Path, state: dict) -> None:
    """torch.save to PATH.tmp, then an atomic rename: a crash never leaves a half-written checkpoint."""
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: str | os.PathLike, kind: str | None = None) -> dict:
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    if kind is not None and ckpt.get("kind") != kind:
        raise SystemExit(f"{path} is a {ckpt.get('kind')!r} checkpoint, not {kind!r}")
    return ckpt


def resume_checkpoint(out: Path, resume: bool, kind: str, prog: str) -> dict | None:
    """OUT/last.pt when --resume and it exists; None (a new run) otherwise."""
    if resume and (out / "last.pt").exists():
        return load_checkpoint(out / "last.pt", kind)
    if resume:
        print(f"{prog}: no {out / 'last.pt'} yet; starting a new run", flush=True)
    return None


# ---------------------------------------------------------------------------------------------------------------
# the training loop's bookkeeping

class EpochPlan(NamedTuple):
    batch_size: int
    steps_per_epoch: int
    total_steps: int  # the learning-rate schedule's length
    stop_at: int


def epoch_plan(n: int, batch_size: int, epochs: int, max_steps: int | None) -> EpochPlan:
    batch_size = max(2, min(batch_size, n))  # BatchNorm needs two faces
    steps_per_epoch = max(1, n // batch_size)
    total_steps = epochs * steps_per_epoch
    stop_at = total_steps if max_steps is None else min(total_steps, max_steps)
    return EpochPlan(batch_size, steps_per_epoch, total_steps, stop_at)


def plan_banner(steps_per_epoch: int, total_steps: int, device: torch.device, use_amp: bool,
                resumed_at: int | None) -> str:
    """The end of a trainer's start-up line: its schedule, device and the step a resumed run picks up at."""
    return (f"{steps_per_epoch} steps/epoch, {total_steps} steps; device {device}"
            f"{', bf16 autocast' if use_amp else ''}"
            + (f"; resumed at step {resumed_at}" if resumed_at is not None else ""))


def set_learning_rate(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


def time_up(max_minutes: float | None, elapsed: float) -> str | None:
    """The stop reason once `elapsed` seconds exceed --max-minutes, else None."""
    if max_minutes is not None and elapsed > max_minutes * 60:
        return f"--max-minutes {max_minutes} reached"
    return None


class RunControl:
    """The end of each training step and of the run: the --max-minutes stop, a save (metrics flushed, then
    `checkpoint()`) every `save_every_minutes` (> 0), and the final save."""

    def __init__(self, max_minutes: float | None, save_every_minutes: float, metrics: "MetricsLog",
                 progress: "Progress", checkpoint: Callable[[], None]):
        self.max_minutes, self.save_every_minutes = max_minutes, save_every_minutes
        self.metrics, self.progress, self.checkpoint = metrics, progress, checkpoint
        self.last_save = time.time()

    def after_step(self, elapsed: float) -> str | None:
        """The reason to stop now (--max-minutes reached), else None after a save when one is due."""
        reason = time_up(self.max_minutes, elapsed)
        if reason is None and self.save_every_minutes > 0 \
                and time.time() - self.last_save > self.save_every_minutes * 60:
            self.metrics.flush()
            self.checkpoint()
            self.last_save = time.time()
        return reason

    def end_step(self, step: int, *, stop_at: int, total_steps: int, start_step: int, log_every: int,
                 elapsed: float, report: Callable[[dict], str]) -> str | None:
        """The end of a training step, the same in every trainer: the progress bar, every `log_every` steps (and at
        `stop_at`) the metrics flushed and a line `step N/TOTAL <report(last metrics)> <s/step>`, then `after_step`.
        Returns the reason to stop, or None."""
        self.progress.update()
        if step % log_every == 0 or step == stop_at:
            last = self.metrics.flush()
            self.progress.report(f"step {step}/{total_steps} {report(last)} "
                                 f"{elapsed / max(step - start_step, 1):.2f}s/step")
        return self.after_step(elapsed)

    def finish(self) -> None:
        self.progress.close()
        self.metrics.flush()
        self.checkpoint()

    def end_run(self, prog: str, stop_reason: str | None, step: int, outputs: str) -> int:
        """The final save and the last line (`PROG: done at step N<outputs>`); the exit status (130 when
        interrupted)."""
        self.finish()
        print(f"{prog}: {stop_reason + ', stopped' if stop_reason else 'done'} at step {step}{outputs}", flush=True)
        return 130 if stop_reason == "interrupted" else 0


def fit(train_step: Callable[[int], tuple[dict, dict]], *, prog: str, step: int, stop_at: int, total_steps: int,
        log_every: int, metrics: "MetricsLog", desc: str, max_minutes: float | None, save_every_minutes: float,
        checkpoint: Callable[[int], None], report: Callable[[dict], str], outputs: Callable[[int], str],
        start: float, elapsed_before: float, images_per_step: int, time_format: str = ".2f") -> int:
    """The training loop of every trainer, from `step` to `stop_at`: `train_step(step)` does one update and returns
    its metrics row (plain values, tensors), to which the loop adds step, time and images_per_s; the log line
    (`report`), --max-minutes and the periodic save (`checkpoint(step)`) go through `RunControl`; Ctrl-C stops as
    "interrupted". Ends with the final save and the last line (`outputs(step)` after the step); returns the exit
    status (130 when interrupted)."""
    control = RunControl(max_minutes, save_every_minutes, metrics, Progress(stop_at, step, desc),
                         lambda: checkpoint(step))
    start_step, stop_reason = step, None
    try:
        while step < stop_at:
            plain, tensors = train_step(step)
            step += 1
            elapsed = time.time() - start
            metrics.add({"step": step, "time": f"{elapsed_before + elapsed:{time_format}}", **plain,
                         "images_per_s": f"{(step - start_step) * images_per_step / max(elapsed, 1e-9):.1f}"},
                        tensors)
            stop_reason = control.end_step(step, stop_at=stop_at, total_steps=total_steps, start_step=start_step,
                                           log_every=log_every, elapsed=elapsed, report=report)
            if stop_reason:
                break
    except KeyboardInterrupt:
        stop_reason = "interrupted"
    return control.end_run(prog, stop_reason, step, outputs(step))


class MetricsLog:
    """metrics.csv, appended across resumes; rows are held as device tensors and read back once per flush."""

    def __init__(self, path: Path, fields: list[str]):
        self.path, self.fields = path, fields
        self.rows: list[tuple[dict, dict]] = []
        if not path.exists():
            with open(path, "w", newline="") as f:
                csv.writer(f, lineterminator="\n").writerow(fields)

    def add(self, plain: dict, tensors: dict) -> None:
        self.rows.append((plain, {k: v.detach().float().reshape(()) for k, v in tensors.items()}))

    def flush(self) -> dict:
        """Write the buffered rows; returns the mean of each tensor column over them (plus the last plain row)."""
        if not self.rows:
            return {}
        keys = sorted({k for _, t in self.rows for k in t})
        device = next(v for _, t in self.rows for v in t.values()).device
        nan = torch.tensor(float("nan"), device=device)
        values = torch.stack([torch.stack([t.get(k, nan) for k in keys]) for _, t in self.rows]).cpu()
        with open(self.path, "a", newline="") as f:
            w = csv.DictWriter(f, self.fields, extrasaction="ignore", lineterminator="\n")
            for (plain, _), row_values in zip(self.rows, values.tolist()):
                row = dict(plain)
                row.update({k: "" if math.isnan(v) else f"{v:.6g}" for k, v in zip(keys, row_values)})
                w.writerow(row)
        summary = {k: float(np.nanmean(values[:, i].numpy())) if not torch.isnan(values[:, i]).all() else float("nan")
                   for i, k in enumerate(keys)}
        summary.update(self.rows[-1][0])
        self.rows = []
        return summary


class Progress:
    """tqdm on a terminal, otherwise one flushed line per log interval."""

    def __init__(self, total: int, initial: int, desc: str):
        self.bar = None
        if sys.stderr.isatty():
            from tqdm import tqdm
            self.bar = tqdm(total=total, initial=initial, desc=desc, dynamic_ncols=True)

    def update(self) -> None:
        if self.bar is not None:
            self.bar.update(1)

    def report(self, line: str, postfix: str | None = None) -> None:
        """`line` printed; on a terminal `postfix` (default `line`) goes next to the bar instead."""
        if self.bar is not None:
            self.bar.set_postfix_str(line if postfix is None else postfix)
        else:
            print(line, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
