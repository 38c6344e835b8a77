"""dlib as its authors use it: Euclidean distance between raw (not normalised) descriptors, on the same dev pairs
and rank-1 protocol as `lrface eval` (lrface.training.evaluate), faces warped to dlib's chip geometry.

    python -m lrface.training.dlib_euclidean --data ../shared/data/dev

`lrface eval` scores L2-normalised embeddings by cosine similarity; dlib documents a Euclidean distance threshold
(0.6) on its raw 128-d descriptors, so this is the comparison row at dlib's best. Descriptors come from the torch
port (lrface.models.dlib_resnet, parity with dlib 3e-7). Prints a Markdown row (TAR % at FAR 1e-1/1e-2/1e-3/1e-4).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

from lrface.models.dlib_resnet import DlibFaceModel
from lrface.core.face import read_image, to_model_input
from lrface.training.evaluate import FARS, pair_masks, protocol_sets, rank1_lr_vs_hr, read_dev_folder, tar_at_far


def descriptors(model: torch.nn.Module, paths: list[Path], batch: int = 64) -> np.ndarray:
    out = []
    with torch.inference_mode():
        for i in range(0, len(paths), batch):
            out.append(model(torch.from_numpy(to_model_input([read_image(p) for p in paths[i:i + batch]]))).numpy())
    return np.concatenate(out)


def euclidean_pair_scores(a: np.ndarray, b: np.ndarray, labels: np.ndarray, symmetric: bool):
    """Genuine and impostor scores (minus the distance) over the pairs lrface.training.evaluate.pair_scores uses."""
    d = np.sqrt(np.maximum((a ** 2).sum(1)[:, None] + (b ** 2).sum(1)[None] - 2 * a @ b.T, 0))
    genuine, impostor = pair_masks(labels, symmetric)
    return -d[genuine], -d[impostor]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m lrface.training.dlib_euclidean", description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True, help="dev-style folder: hr/, lr/, images.csv")
    p.add_argument("--threads", type=int)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    _, identities, hr_paths, lr_paths = read_dev_folder(Path(args.data))
    _, labels = np.unique(np.asarray(identities), return_inverse=True)
    model = DlibFaceModel.from_dat()
    hr, lr = descriptors(model, hr_paths), descriptors(model, lr_paths)
    cells = []
    for a, b, symmetric in protocol_sets(hr, lr).values():
        genuine, impostor = euclidean_pair_scores(a, b, labels, symmetric)
        impostor = np.sort(impostor)[::-1]
        cells.append(" / ".join(f"{100 * tar_at_far(genuine, impostor, far)[0]:.1f}" for far in FARS))
    # rank-1 by the smallest distance: with p' = [p, 1] and g' = [2g, -|g|^2], p'.g' = |p|^2 - |p - g|^2
    rank1 = rank1_lr_vs_hr(np.hstack([2 * hr, -(hr ** 2).sum(1, keepdims=True)]),
                           np.hstack([lr, np.ones((len(lr), 1), lr.dtype)]), labels)[0]
    print(f"| dlib, Euclidean distance of raw descriptors | {' | '.join(cells)} | {100 * rank1:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
