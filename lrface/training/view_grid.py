"""The test-time options of an adapt embedder (`lrface.training.train_adapt`: LR view weight, gate floor), scored
on a dev-style folder for a grid of values, without exporting each one.

    python -m lrface.training.view_grid --model M.onnx --data ../shared/data/dev [--height 32]
        [--weights 0 0.35 0.5] [--floors 0 0.1 0.2 0.3 0.5] [--people all|even|odd] [--out grid.json]

M.onnx is a gated adapt export with mirror averaging and no LR view (e.g. `adapt_handmade_flip_6k`); its weights
are read back from the graph (`train_adapt.adapt_checkpoint_from_onnx`). The teacher's feature f_HR, the fused
feature and W of every image, of its mirror image and of both seen as `--height`-pixel captures (`LRView.view`)
are computed once; each grid point is then the embedding that `build_embedder` exports for it,

    e(x) = n(n(g(x)) + n(g(mirror x))) + w n(n(g(v(x))) + n(g(mirror v(x)))),
    g(x) = f_HR + W'(x) (fused - f_HR) / W(x) - c,   W' = max(0, (W - floor) / (1 - floor))

(n: L2 normalisation), scored like `lrface eval` (TAR % at FAR 1e-3 per protocol, rank-1). `lrface eval` of the
re-exported file (`train-adapt --reexport`) gives the same numbers up to float rounding. Picking values on dev
makes dev numbers optimistic: say so wherever the picked values are reported.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

from lrface.core.face import read_image, to_model_input
from lrface.training.evaluate import PEOPLE, evaluate_embeddings, far_key, read_dev_folder


def parts(model, view, paths: list[Path], batch: int = 64) -> dict[str, dict[str, np.ndarray]]:
    """{plain, mirror, view, view_mirror} -> {f_hr, fused, w} of every image."""
    transforms = {"plain": lambda x: x, "mirror": lambda x: torch.flip(x, dims=[3]), "view": view,
                  "view_mirror": lambda x: view(torch.flip(x, dims=[3]))}
    out = {t: {"f_hr": [], "fused": [], "w": []} for t in transforms}
    with torch.inference_mode():
        for i in range(0, len(paths), batch):
            x = torch.from_numpy(to_model_input([read_image(p) for p in paths[i:i + batch]]))
            for name, fn in transforms.items():
                got = model.parts(fn(x))
                for k in out[name]:
                    out[name][k].append(got[k].numpy())
    return {t: {k: np.concatenate(v) for k, v in d.items()} for t, d in out.items()}


def unit(a: np.ndarray) -> np.ndarray:
    return a / np.linalg.norm(a, axis=1, keepdims=True)


def embedding(p: dict, center: np.ndarray, weight: float, floor: float) -> np.ndarray:
    def g(d):
        w = d["w"]
        translated = np.where(w > 1e-6, (d["fused"] - d["f_hr"]) / np.maximum(w, 1e-6), 0.0)
        w2 = np.clip((w - floor) / (1 - floor), 0, 1) if floor > 0 else w
        return d["f_hr"] + w2 * translated - center

    e = unit(unit(g(p["plain"])) + unit(g(p["mirror"])))
    if weight:
        e = e + weight * unit(unit(g(p["view"])) + unit(g(p["view_mirror"])))
    return unit(e)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m lrface.training.view_grid", description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True, help="a gated adapt embedder (.onnx + .json), without an LR view")
    ap.add_argument("--data", required=True, help="dev-style folder (hr/, lr/, images.csv)")
    ap.add_argument("--height", type=int, default=32, help="LR view height in pixels (default 32)")
    ap.add_argument("--weights", type=float, nargs="+", default=[0.0, 0.35, 0.5])
    ap.add_argument("--floors", type=float, nargs="+", default=[0.0, 0.1, 0.2, 0.3, 0.5])
    ap.add_argument("--people", choices=PEOPLE, default="all",
                    help="only the identities whose CRC-32 is even / odd: pick on one half, check on the other")
    ap.add_argument("--threads", type=int)
    ap.add_argument("--out", help="write the grid as JSON here")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    from lrface.models.ran import ModelMR
    from lrface.training.configs.adapt_full import AdaptConfig
    from lrface.training.train_adapt import Centred, LRView, adapt_checkpoint_from_onnx, build_embedder

    try:
        ckpt = adapt_checkpoint_from_onnx(args.model)
    except (OSError, ValueError) as e:
        raise SystemExit(f"view_grid: {e}")
    cfg = AdaptConfig(**ckpt["config"])
    if cfg.ensemble != 1:
        raise SystemExit(f"view_grid: {args.model} is an ensemble of {cfg.ensemble} models; give one model's export")
    if cfg.lr_view_height or not cfg.flip_average:
        raise SystemExit(f"view_grid: {args.model} must be exported with mirror averaging and without an LR view")
    net = build_embedder(cfg, ckpt["lr_branch"], ckpt["gate"])
    model = next(m for m in net.modules() if isinstance(m, ModelMR))
    center = next(m for m in net.modules() if isinstance(m, Centred)).center.numpy()
    view = LRView(torch.nn.Identity(), args.height, 0.0).view
    _, identities, hr_paths, lr_paths = read_dev_folder(Path(args.data), args.people)
    hr, lr = parts(model, view, hr_paths), parts(model, view, lr_paths)
    rows = []
    key = far_key(1e-3)
    print("| LR view weight | gate floor | HR-HR | HR-LR | LR-LR | rank-1 |\n|---|---|---|---|---|---|")
    for weight in args.weights:
        for floor in args.floors:
            m = evaluate_embeddings(embedding(hr, center, weight, floor), embedding(lr, center, weight, floor),
                                    identities)
            tar = {p: round(100 * m["tar_at_far"][p][key], 1) for p in ("hr_hr", "hr_lr", "lr_lr")}
            row = {"lr_view_weight": weight, "gate_floor": floor, "height": args.height, "tar_at_far_1e-3": tar,
                   "rank1": round(100 * m["rank1_lr_vs_hr"], 1)}
            rows.append(row)
            print(f"| {weight} | {floor} | {tar['hr_hr']} | {tar['hr_lr']} | {tar['lr_lr']} | {row['rank1']} |",
                  flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps({"model": args.model, "data": args.data, "people": args.people,
                                              "images": len(identities), "grid": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
