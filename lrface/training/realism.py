"""`lrface realism DIR_A DIR_B`: a classifier two-sample test of how distinguishable two folders of LR faces are.

A small CNN is trained on half of each folder to tell A from B and scored on the other half. Held-out
accuracy 0.5 means the classifier cannot tell them apart (e.g. synthesized LR faces that look like the real
captures); 1.0 means every face gives its folder away. Every image is first brought to one small size
(bicubic, default 56x48) so the test looks at appearance, not at file size. torch, CPU, well under a minute
for ~1.8k + 1.8k faces.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from lrface.core.face import ImageDecodeError, read_image, resize_rgb
from lrface.core.files import list_images

DEFAULT_SIZE = (56, 48)  # height, width: the 112x96 aspect, 2x the typical capture


def load_folder(root: str | os.PathLike, size: tuple[int, int] = DEFAULT_SIZE) -> np.ndarray:
    """Every readable image under root (recursively, sorted) resized to `size`: uint8 N x H x W x 3."""
    images = []
    for path in list_images(root):
        try:
            images.append(resize_rgb(read_image(path), size[0], size[1]))
        except (ImageDecodeError, OSError):
            continue
    if not images:
        raise FileNotFoundError(f"no readable images under {root}")
    return np.stack(images)


def wilson_interval(correct: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """95% Wilson score interval of a binomial proportion."""
    if n == 0:
        return 0.0, 1.0
    p = correct / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    # min/max: at p = 0 or 1 rounding can put the bound a hair inside the observed proportion.
    return max(0.0, min(p, centre - half)), min(1.0, max(p, centre + half))


def binomial_p_value(correct: int, n: int) -> float:
    """One-sided exact p-value of >= `correct` successes out of n under chance (p = 0.5)."""
    if n == 0:
        return 1.0
    log_terms = [math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1) - n * math.log(2)
                 for i in range(correct, n + 1)]
    top = max(log_terms)
    return min(1.0, math.exp(top) * sum(math.exp(t - top) for t in log_terms))


class RealismCNN(nn.Module):
    """Three conv blocks and a linear head: enough to pick up blur, noise, colour and compression statistics."""

    def __init__(self, width: int = 16):
        super().__init__()

        def block(cin: int, cout: int) -> nn.Sequential:
            return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
                                 nn.MaxPool2d(2))

        self.features = nn.Sequential(block(3, width), block(width, 2 * width), block(2 * width, 4 * width))
        self.head = nn.Linear(4 * width, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).mean(dim=(2, 3))).squeeze(1)


def _to_tensor(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(images).permute(0, 3, 1, 2).float().div_(127.5).sub_(1.0).contiguous()


def two_sample_test(images_a: np.ndarray, images_b: np.ndarray, *, seed: int = 0, epochs: int = 8,
                    batch_size: int | None = None, lr: float = 2e-3) -> dict:
    """Held-out accuracy of a CNN telling A from B, with a 95% CI and a p-value against chance.

    Samples are made equal in size by subsampling the larger one; each is split 50/50 into train and test
    (stratified), all from `seed`. The default batch size (64, smaller for small samples so that every epoch
    still takes a dozen or so steps) lets tiny folders train as well as the dev-sized ones.
    """
    rng = np.random.default_rng(seed)
    n = min(len(images_a), len(images_b))
    if n < 4:
        raise ValueError(f"need at least 4 images per folder, got {len(images_a)} and {len(images_b)}")
    a = images_a[rng.permutation(len(images_a))[:n]]
    b = images_b[rng.permutation(len(images_b))[:n]]
    n_train = n // 2
    x_train = _to_tensor(np.concatenate([a[:n_train], b[:n_train]]))
    y_train = torch.cat([torch.zeros(n_train), torch.ones(n_train)])
    x_test = _to_tensor(np.concatenate([a[n_train:], b[n_train:]]))
    y_test = torch.cat([torch.zeros(n - n_train), torch.ones(n - n_train)])

    if batch_size is None:
        batch_size = min(64, max(8, len(x_train) // 16))
    torch.manual_seed(seed)
    model = RealismCNN()
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    steps = epochs * math.ceil(len(x_train) / batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=max(1, steps))
    loss_fn = nn.BCEWithLogitsLoss()
    gen = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(x_train), generator=gen)
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
            x = x_train[idx]
            # Faces are left-right symmetric, so flips add data without telling the folders apart.
            flip = torch.rand(len(idx), generator=gen) < 0.5
            x = torch.where(flip[:, None, None, None], x.flip(3), x)
            loss = loss_fn(model(x), y_train[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    model.eval()
    with torch.no_grad():
        logits = torch.cat([model(x_test[s:s + 256]) for s in range(0, len(x_test), 256)])
    correct = int(((logits > 0).float() == y_test).sum())
    total = len(y_test)
    lo, hi = wilson_interval(correct, total)
    return {"seed": seed, "accuracy": correct / total, "ci95": [lo, hi], "n_test": total, "n_train": len(y_train),
            "p_value": binomial_p_value(correct, total)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="lrface realism", description="Classifier two-sample test: held-out accuracy "
                                "of a small CNN telling DIR_A from DIR_B (0.5 = indistinguishable).")
    p.add_argument("dir_a", metavar="DIR_A")
    p.add_argument("dir_b", metavar="DIR_B")
    p.add_argument("--seed", type=int, default=0, help="seed of the subsampling, split and training (default 0)")
    p.add_argument("--epochs", type=int, default=8, help="training epochs (default 8)")
    p.add_argument("--repeats", type=int, default=1, metavar="R", help="repeat with seeds S..S+R-1 and report mean ± std")
    p.add_argument("--size", default=f"{DEFAULT_SIZE[0]}x{DEFAULT_SIZE[1]}", metavar="HxW", help="common image size (default 56x48)")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--json", metavar="OUT", help="write the result as JSON")
    args = p.parse_args(argv)
    try:
        size = tuple(int(v) for v in args.size.lower().split("x"))
        if len(size) != 2 or min(size) < 8:
            raise ValueError
    except ValueError:
        p.error(f"--size must be HxW with both >= 8, not {args.size!r}")
    if args.repeats < 1 or args.epochs < 1:
        p.error("--repeats and --epochs must be >= 1")
    if args.threads:
        torch.set_num_threads(args.threads)
    started = time.time()
    try:
        a, b = load_folder(args.dir_a, size), load_folder(args.dir_b, size)
        runs = [two_sample_test(a, b, seed=args.seed + r, epochs=args.epochs) for r in range(args.repeats)]
    except (FileNotFoundError, ValueError) as exc:
        print(f"lrface realism: error: {exc}", file=sys.stderr)
        return 1
    accs = np.array([r["accuracy"] for r in runs])
    result = {"dir_a": str(args.dir_a), "dir_b": str(args.dir_b), "n_a": len(a), "n_b": len(b),
              "n_per_folder": min(len(a), len(b)), "size": list(size), "epochs": args.epochs,
              "accuracy_mean": float(accs.mean()), "accuracy_std": float(accs.std(ddof=1)) if len(accs) > 1 else 0.0,
              "runs": runs, "seconds": round(time.time() - started, 1)}
    if len(runs) == 1:
        r = runs[0]
        print(f"realism: held-out accuracy {r['accuracy']:.3f} (95% CI {r['ci95'][0]:.3f}-{r['ci95'][1]:.3f}, "
              f"n_test {r['n_test']}, p {r['p_value']:.2g}); 0.5 = indistinguishable")
    else:
        print(f"realism: held-out accuracy {result['accuracy_mean']:.3f} ± {result['accuracy_std']:.3f} over "
              f"{len(runs)} seeds (n_test {runs[0]['n_test']} each); 0.5 = indistinguishable")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
