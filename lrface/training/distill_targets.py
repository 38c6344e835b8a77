"""An ensemble's features of the bundle's LR faces: the targets a distilled student learns from
(`AdaptConfig.distill_targets`, `lrface.training.train_adapt`). Computed once and cached in the bundle.

    python -m lrface.training.distill_targets --model lrface/models/weights/embedder.onnx --data runs/adapt-data \
        [--name ensemble] [--kinds handmade] [--threads 2]

For each LR version of a source (`lr_<kind>.npy`) and each real capture (`real_lr.npy`) it writes the fused
feature of the adapted model(s) in `--model` (an adapt embedder's .onnx, e.g. the shipped ensemble, or an adapt
`last.pt`), in dlib's units, as training computes it (no mirror image, no LR view, no gate floor):

    f = 1/K sum_k [(1 - W_k) f_HR + W_k T_k(f_LR,k)]

with f_HR the teacher's cached feature of that face. Only the K Model_LR copies run (0.5 GFLOP each a face); the
teacher's work is in the bundle already. Output: `<name>_<kind>.npy` and `<name>_real.npy` (float32 N x 128) in
the bundle folder, and `distill.<name>` in its meta.json (the model's path, sha256 and model id). A run stopped
half-way resumes from `<name>_<kind>.partial.npy` (rows done are counted in `.partial.json`).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from lrface.training.adapt_data import LR_KINDS, load as load_bundle

DIM = 128


def members_of(model: str | Path) -> list[tuple[torch.nn.Module, torch.nn.Module]]:
    """The (Model_LR, gate) pairs of an adapt embedder file or checkpoint, in eval mode, gate floor off."""
    from dataclasses import replace

    from lrface.training.configs.adapt_full import AdaptConfig
    from lrface.training.train_adapt import load_adapt_weights, member_pair

    ckpt = load_adapt_weights(model)
    cfg = replace(AdaptConfig(**ckpt["config"]), gate_floor=0.0)  # training's gate: the floor is an export option
    pairs = [member_pair(cfg, m["lr_branch"], m["gate"], pretrained=False)
             for m in [{"lr_branch": ckpt["lr_branch"], "gate": ckpt["gate"]}] + list(ckpt.get("more", []))]
    return [(lr_branch.eval(), gate.eval()) for lr_branch, gate in pairs]


@torch.inference_mode()
def fused_features(pairs, images, t_hr, *, batch: int = 64, out: Path, desc: str = "") -> np.ndarray:
    """The members' mean fused feature of uint8 canvases `images` (N x 112 x 96 x 3) whose teacher features are
    `t_hr`, written to `out` (.npy) through a resumable partial file."""
    n = len(images)
    partial, progress = out.with_suffix(".partial.npy"), out.with_suffix(".partial.json")
    done = json.loads(progress.read_text())["rows"] if progress.exists() and partial.exists() else 0
    arr = (np.lib.format.open_memmap(partial, mode="r+") if done else
           np.lib.format.open_memmap(partial, mode="w+", dtype=np.float32, shape=(n, DIM)))
    t0, start = time.time(), done
    for i in range(done, n, batch):
        x = torch.from_numpy(np.array(images[i:i + batch])).permute(0, 3, 1, 2).float()
        x = (x - 127.5) / 127.5
        f_hr = torch.from_numpy(np.array(t_hr[i:i + batch]))
        arr[i:i + len(x)] = torch.stack([gate(f_hr, lr(x))["fused"] for lr, gate in pairs]).mean(0).numpy()
        if (i // batch) % 20 == 0 or i + len(x) == n:
            arr.flush()
            progress.write_text(json.dumps({"rows": i + len(x)}))
            rate = (i + len(x) - start) / max(time.time() - t0, 1e-9)
            print(f"distill-targets: {desc} {i + len(x)}/{n} ({rate:.1f} faces/s, "
                  f"{(n - i - len(x)) / max(rate, 1e-9) / 60:.1f} min left)", flush=True)
    arr.flush()
    del arr
    partial.replace(out)
    progress.unlink(missing_ok=True)
    return np.load(out, mmap_mode="r")


def build(model: str | Path, data: str | Path, name: str = "ensemble", kinds=("handmade",),
          batch: int = 64) -> dict:
    data = Path(data)
    if not name.isidentifier():
        raise ValueError(f"--name {name!r}: use letters, digits and _ (it names files in the bundle)")
    bundle = load_bundle(data)
    for kind in kinds:
        if kind not in LR_KINDS:
            raise ValueError(f"LR kinds must be among {', '.join(LR_KINDS)}, not {kind!r}")
    sha = hashlib.sha256(Path(model).read_bytes()).hexdigest()
    made = bundle["meta"].get("distill", {}).get(name)
    if made and made["sha256"] != sha:
        raise ValueError(f"{data} already holds targets named {name!r} from another model ({made['model']}, "
                         f"sha256 {made['sha256'][:8]}…): pick another --name, or delete {data}/{name}_*.npy")
    pairs = members_of(model)
    sidecar = Path(model).with_suffix(".json")
    model_id = json.loads(sidecar.read_text()).get("model_id") if sidecar.is_file() else None
    print(f"distill-targets: {len(pairs)} member(s) of {model} (sha256 {sha[:8]}…) -> {data}/{name}_*.npy",
          flush=True)
    jobs = [(kind, bundle[f"lr_{kind}"], bundle[f"teacher_{kind}"]) for kind in kinds]
    if "real_lr" in bundle:
        jobs.append(("real", bundle["real_lr"], bundle["teacher_real"]))
    t0 = time.time()
    for kind, images, t_hr in jobs:
        out = data / f"{name}_{kind}.npy"
        if out.exists():
            print(f"distill-targets: {out} exists, kept", flush=True)
            continue
        fused_features(pairs, images, t_hr, batch=batch, out=out, desc=kind)
    meta_path = data / "meta.json"
    meta = json.loads(meta_path.read_text())
    meta.setdefault("distill", {})[name] = {"model": str(model), "sha256": sha, "model_id": model_id,
                                            "members": len(pairs), "kinds": [k for k, _, _ in jobs],
                                            "seconds": round(time.time() - t0, 1)}
    meta_path.write_text(json.dumps(meta))
    return meta["distill"][name]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m lrface.training.distill_targets", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="adapt embedder .onnx (e.g. the shipped ensemble) or last.pt")
    p.add_argument("--data", required=True, help="the lrface.training.adapt_data bundle")
    p.add_argument("--name", default="ensemble", help="file prefix in the bundle (config field distill_targets)")
    p.add_argument("--kinds", nargs="+", default=["handmade"], help=f"LR kinds ({', '.join(LR_KINDS)})")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--threads", type=int)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        build(args.model, args.data, args.name, tuple(args.kinds), args.batch)
    except (OSError, ValueError) as e:
        raise SystemExit(f"distill-targets: {e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
