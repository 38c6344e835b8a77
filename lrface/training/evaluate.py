"""`lrface eval`: verification and identification metrics of an embedder ONNX model on a dev-style folder.

    lrface eval --data DIR --model embedder.onnx [--out DIR] [--name NAME] [--people all|even|odd]
                [--bootstrap N [--seed S]] [--against M2.onnx]

DIR holds `hr/<identity>/<name>.<ext>`, `lr/<identity>/<name>.<ext>` (an LR capture of each HR image, same stem)
and `images.csv` (`stem,identity,lr_height,lr_width`). Runs on onnxruntime only (no torch) through the
inference core, `lrface.core.embedder.Embedder` (the model needs its JSON sidecar, as everywhere else); images go
through the shared decoder (`lrface.core.face.read_image`) and the core's `to_model_input` (any size -> 112x96 canvas).

Other embedders are scored on exactly the same pairs with `evaluate_folder(data, embed_fn, ...)` (any function
from a list of uint8 RGB faces to L2-normalised rows) or `evaluate_embeddings(hr, lr, identities)` on arrays;
`write_report` writes and prints the results the same way (see lrface/training/compare_dlib.py).

Protocols (scores are cosine similarities, computed as full matrices):
- HR-HR and LR-LR: every unordered pair of distinct images; genuine = same identity.
- HR-LR: gallery HR image i, probe LR capture j != i (never the LR capture of the same image); genuine = same
  identity, impostors = every cross-identity (i, j).
- TAR at FAR 1e-1..1e-4: the threshold is the k-th highest impostor score, k = floor(FAR * impostors), and TAR is
  the fraction of genuine scores above it.
- rank-1: closed-set identification of each LR probe against an HR gallery holding one image per identity: the
  probe identity's first HR image of another stem, every other identity's first HR image (single-image
  identities stay in as distractors). Probes are the LR captures of identities with at least two images.
- verify_threshold: the HR-LR threshold at FAR 1e-3, the sidecar's "same person" cut-off.
- hr_lr_tar_by_height: the HR-LR TAR at verify_threshold for captures under 24, 24-31, 32-41 and from 42 px high
  (images.csv's lr_height of the pair's LR capture), with the captures and genuine pairs in each group.
- --people even / odd: only the identities whose CRC-32 (of the UTF-8 name) is even / odd, a fixed split of the
  people into two halves that needs no seed. A change that helps on one folder should help on both halves; the
  model card's shipping rules read these.
- --bootstrap N (off by default): a 95 % interval for every TAR and for rank-1 from N resamples of the *people*
  (identities drawn with replacement, seed --seed): an identity drawn c times weighs c in its genuine pairs and
  its probes, and c x c' in its impostor pairs with another drawn identity; each resample recomputes the
  thresholds (the same k-th-highest rule on the weighted impostors) and the TARs at them; rank-1's gallery stays
  as it is. It says how far a number could move on another set of people of the same kind.
- --against M2: a second embedder scored on the same images; the JSON's "against" block holds its TARs and rank-1
  and this model's minus its, and with --bootstrap the paired interval of each difference (both models on the same
  resampled people), which is much narrower than either model's own interval: the way to tell whether one model
  beats another on people like these.

Writes `metrics_<name>.json` and `roc_<name>.png` under --out and prints a Markdown table row.
"""
from __future__ import annotations

import argparse
import csv
import json
import sys
import time
import zlib
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from lrface.core.face import read_image
from lrface.core.files import IMAGE_EXTENSIONS
from lrface.core.embedder import Embedder, embedder_path
from lrface.core.onnx_model import ModelNotFoundError, default_model_path

# list of uint8 RGB faces (any size) -> float32 N x D, rows L2-normalised
EmbedFn = Callable[[list[np.ndarray]], np.ndarray]

FARS = (1e-1, 1e-2, 1e-3, 1e-4)
PROTOCOLS = ("hr_hr", "hr_lr", "lr_lr")
PROTOCOL_LABELS = {"hr_hr": "HR-HR", "hr_lr": "HR-LR", "lr_lr": "LR-LR"}
PEOPLE = ("all", "even", "odd")
HEIGHT_EDGES = (24, 32, 42)  # capture-height groups of hr_lr_tar_by_height: <24, 24-31, 32-41, >=42 px


def in_people(identity: str, people: str) -> bool:
    """Whether `identity` belongs to `people`: "all", or the "even" / "odd" half by the CRC-32 of its name."""
    if people not in PEOPLE:
        raise ValueError(f"people must be one of {', '.join(PEOPLE)}, got {people!r}")
    return people == "all" or zlib.crc32(identity.encode("utf-8")) % 2 == (people == "odd")


def far_key(far: float) -> str:
    return f"{far:.0e}".replace("e-0", "e-")  # 1e-3


# ---------------------------------------------------------------------------------------------------------------
# data and embeddings

def read_dev_folder(root: Path, people: str = "all") -> tuple[list[str], list[str], list[Path], list[Path]]:
    """Stems, identities, HR paths and LR paths, in images.csv order, of the identities in `people`
    (`in_people`)."""
    csv_path = root / "images.csv"
    if not csv_path.exists():
        raise SystemExit(f"eval: {csv_path} not found (expected a dev-style folder: hr/, lr/, images.csv)")

    def index(sub: str) -> dict[str, Path]:
        base = root / sub
        return {p.relative_to(base).with_suffix("").as_posix(): p
                for p in base.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS}

    hr_files, lr_files = index("hr"), index("lr")
    stems, identities, hr_paths, lr_paths = [], [], [], []
    with open(csv_path, newline="") as f:
        for row in csv.DictReader(f):
            stem = row["stem"]
            if not in_people(row["identity"], people):
                continue
            if stem not in hr_files or stem not in lr_files:
                raise SystemExit(f"eval: {stem!r} in images.csv has no {'HR' if stem not in hr_files else 'LR'} image")
            stems.append(stem)
            identities.append(row["identity"])
            hr_paths.append(hr_files[stem])
            lr_paths.append(lr_files[stem])
    if not stems:
        raise SystemExit(f"eval: {csv_path} lists no images" + ("" if people == "all" else f" of the {people} half"))
    return stems, identities, hr_paths, lr_paths


def embed_files(embed: EmbedFn, paths: list[Path], batch_size: int, pool: ThreadPoolExecutor) -> np.ndarray:
    """`embed` over the decoded images in batches of `batch_size`; the next batch decodes (threads) while the
    current one is embedded. `embed` maps a list of uint8 RGB arrays (any size) to N x D L2-normalised rows."""
    batches = [paths[i:i + batch_size] for i in range(0, len(paths), batch_size)]

    def decode(batch: list[Path]) -> list[np.ndarray]:
        return list(pool.map(read_image, batch))

    out = []
    with ThreadPoolExecutor(max_workers=1) as ahead:
        pending = ahead.submit(decode, batches[0])
        for k in range(len(batches)):
            faces = pending.result()
            if k + 1 < len(batches):
                pending = ahead.submit(decode, batches[k + 1])
            out.append(np.asarray(embed(faces), dtype=np.float32))
    return np.concatenate(out)


# ---------------------------------------------------------------------------------------------------------------
# metrics

def protocol_sets(hr: np.ndarray, lr: np.ndarray) -> dict[str, tuple[np.ndarray, np.ndarray, bool]]:
    """(gallery, probe, symmetric) of each protocol in PROTOCOLS."""
    return {"hr_hr": (hr, hr, True), "hr_lr": (hr, lr, False), "lr_lr": (lr, lr, True)}


def pair_masks(labels: np.ndarray, symmetric: bool) -> tuple[np.ndarray, np.ndarray]:
    """Boolean N x N masks of the genuine and the impostor pairs; `symmetric`: pairs i < j of one set, else all
    (i, j) with i != j."""
    n = len(labels)
    keep = np.triu(np.ones((n, n), dtype=bool), k=1) if symmetric else ~np.eye(n, dtype=bool)
    same = labels[:, None] == labels[None, :]
    return keep & same, keep & ~same


def pair_scores(gallery: np.ndarray, probe: np.ndarray, labels: np.ndarray, symmetric: bool
                ) -> tuple[np.ndarray, np.ndarray]:
    """Genuine and impostor cosine scores over `pair_masks`."""
    scores = gallery @ probe.T
    genuine, impostor = pair_masks(labels, symmetric)
    return scores[genuine], scores[impostor]


def tar_at_far(genuine: np.ndarray, impostor_desc: np.ndarray, far: float) -> tuple[float, float]:
    """(TAR, threshold): threshold = the k-th highest impostor score, k = floor(FAR * n); TAR = P(genuine > it)."""
    if len(impostor_desc) == 0:
        return float("nan"), float("nan")
    k = min(int(np.floor(far * len(impostor_desc))), len(impostor_desc) - 1)
    threshold = float(impostor_desc[k])
    tar = float(np.mean(genuine > threshold)) if len(genuine) else float("nan")
    return tar, threshold


def roc_curve(genuine: np.ndarray, impostor_desc: np.ndarray, points: int = 200) -> tuple[np.ndarray, np.ndarray]:
    n = len(impostor_desc)
    if n == 0 or len(genuine) == 0:
        return np.array([]), np.array([])
    fars = np.logspace(np.log10(1.0 / n), 0, points)
    ks = np.minimum(np.floor(fars * n).astype(np.int64), n - 1)
    thresholds = impostor_desc[ks]
    genuine_sorted = np.sort(genuine)
    tars = 1.0 - np.searchsorted(genuine_sorted, thresholds, side="right") / len(genuine)
    return fars, tars


def height_groups(edges: Sequence[int] = HEIGHT_EDGES) -> list[tuple[str, int, int | None]]:
    """(label, low, high) of each capture-height group: "<24", "24-31", "32-41", ">=42" for the default edges."""
    bounds = [0, *edges, None]
    return [(f"<{hi}" if lo == 0 else f">={lo}" if hi is None else f"{lo}-{hi - 1}", lo, hi)
            for lo, hi in zip(bounds[:-1], bounds[1:])]


def hr_lr_tar_by_height(hr: np.ndarray, lr: np.ndarray, labels: np.ndarray, heights: np.ndarray,
                        threshold: float) -> dict[str, dict]:
    """TAR of the HR-LR genuine pairs (HR image i, LR capture j of another image of the same identity) at
    `threshold`, grouped by the height of capture j (`height_groups`)."""
    scores = hr @ lr.T
    genuine = (labels[:, None] == labels[None, :]) & ~np.eye(len(labels), dtype=bool)
    out = {}
    for label, lo, hi in height_groups():
        in_group = (heights >= lo) & (heights < hi if hi is not None else True)
        pairs = genuine & in_group[None, :]
        n = int(pairs.sum())
        out[label] = {"tar": float(np.mean(scores[pairs] > threshold)) if n else float("nan"),
                      "captures": int(in_group.sum()), "genuine_pairs": n}
    return out


def read_lr_heights(csv_path: Path, stems: Sequence[str]) -> np.ndarray | None:
    """images.csv's lr_height of each stem, or None where the column is missing or not a whole number."""
    with open(csv_path, newline="") as f:
        rows = {row["stem"]: row.get("lr_height") for row in csv.DictReader(f)}
    try:
        return np.array([int(rows[s]) for s in stems])
    except (TypeError, ValueError, KeyError):
        return None


def rank1_lr_vs_hr(hr: np.ndarray, lr: np.ndarray, labels: np.ndarray) -> tuple[float, int, int]:
    """Closed-set rank-1 of LR probes against a one-image-per-identity HR gallery (see the module docstring)."""
    correct, _, gallery = rank1_hits(hr, lr, labels)
    return (float(correct.mean()) if len(correct) else float("nan")), len(correct), gallery


def rank1_hits(hr: np.ndarray, lr: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """`rank1_lr_vs_hr` per probe: (whether each probe's best gallery match is its identity, the probes'
    labels, the gallery size)."""
    classes = np.unique(labels)
    first = np.array([np.flatnonzero(labels == c)[0] for c in classes])
    second = np.array([(np.flatnonzero(labels == c)[1:2].tolist() or [-1])[0] for c in classes])
    counts = np.bincount(labels, minlength=len(classes))
    probes = np.flatnonzero(counts[labels] >= 2)
    if len(probes) == 0:
        return np.zeros(0, dtype=bool), np.zeros(0, dtype=labels.dtype), len(classes)
    scores = lr[probes] @ hr[first].T  # [P, C]
    own = labels[probes]
    clash = first[own] == probes  # the gallery image of the probe's identity is the probe's own stem
    rows = np.flatnonzero(clash)
    scores[rows, own[rows]] = np.einsum("ij,ij->i", lr[probes[rows]], hr[second[own[rows]]])
    correct = scores.argmax(1) == own
    return correct, own, len(classes)


def weighted_tar_at_far(genuine: np.ndarray, genuine_weight: np.ndarray, impostor_desc: np.ndarray,
                        impostor_weight: np.ndarray, fars: Sequence[float]) -> list[float]:
    """`tar_at_far` at each of `fars` with a weight on every pair (`impostor_weight` in `impostor_desc`'s order):
    the threshold is the impostor score at which the weight above it first exceeds floor(FAR x the impostors'
    total weight), TAR the weight of the genuine scores above it over theirs. With unit weights it is
    `tar_at_far` exactly."""
    cum = np.cumsum(impostor_weight)
    total = genuine_weight.sum()
    if len(cum) == 0 or cum[-1] <= 0 or total <= 0:
        return [float("nan")] * len(fars)
    out = []
    for far in fars:
        k = min(int(np.searchsorted(cum, np.floor(far * cum[-1]), side="right")), len(cum) - 1)
        out.append(float(genuine_weight[genuine > impostor_desc[k]].sum() / total))
    return out


def bootstrap_draws(hr: np.ndarray, lr: np.ndarray, labels: np.ndarray, counts: np.ndarray) -> dict:
    """Every TAR at FAR (keys (protocol, far_key)) and rank-1 (key "rank1") under each row of `counts` (how many
    times each identity 0..C-1 is drawn), as arrays of one value a resample (see the module docstring)."""
    draws: dict = {}
    for protocol, (a, b, symmetric) in protocol_sets(hr, lr).items():
        genuine_mask, impostor_mask = pair_masks(labels, symmetric)
        scores = a @ b.T
        gi, gj = np.nonzero(genuine_mask)
        genuine, genuine_label = scores[gi, gj], labels[gi]
        ii, jj = np.nonzero(impostor_mask)
        impostor = scores[ii, jj]
        order = np.argsort(impostor)[::-1]
        impostor_desc, li, lj = impostor[order], labels[ii[order]], labels[jj[order]]
        del scores, ii, jj, order
        tars = np.array([weighted_tar_at_far(genuine, c[genuine_label], impostor_desc, c[li] * c[lj], FARS)
                         for c in counts])
        for k, far in enumerate(FARS):
            draws[(protocol, far_key(far))] = tars[:, k]
    correct, own, _ = rank1_hits(hr, lr, labels)
    probe_weight = counts[:, own]
    with np.errstate(invalid="ignore", divide="ignore"):
        draws["rank1"] = (probe_weight * correct).sum(1) / probe_weight.sum(1)
    return draws


def bootstrap_intervals(hr: np.ndarray, lr: np.ndarray, labels: np.ndarray, resamples: int, seed: int = 0,
                        level: float = 0.95, against: tuple[np.ndarray, np.ndarray] | None = None) -> dict:
    """Percentile intervals (`level`) of every TAR at FAR and of rank-1 over `resamples` resamples of the
    identities (see the module docstring). `labels` are 0..C-1. `against`: another model's (hr, lr) embeddings
    of the same images; then "difference" holds the intervals of this model's value minus that one's, each
    resample scoring both models on the same drawn people (a paired comparison)."""
    if resamples < 2:
        raise ValueError(f"bootstrap needs at least 2 resamples, got {resamples}")
    rng = np.random.default_rng(seed)
    n_classes = int(labels.max()) + 1
    counts = rng.multinomial(n_classes, np.full(n_classes, 1.0 / n_classes), size=resamples).astype(np.float64)
    lo, hi = 100 * (1 - level) / 2, 100 * (1 + level) / 2

    def interval(values: np.ndarray) -> list[float]:
        v = values[np.isfinite(values)]
        return [float(np.percentile(v, lo)), float(np.percentile(v, hi))] if len(v) else [float("nan")] * 2

    def intervals(draws: dict) -> dict:
        return {"tar_at_far": {p: {far_key(f): interval(draws[(p, far_key(f))]) for f in FARS} for p in PROTOCOLS},
                "rank1_lr_vs_hr": interval(draws["rank1"])}

    draws = bootstrap_draws(hr, lr, labels, counts)
    out = {"resamples": int(resamples), "seed": int(seed), "level": level, "unit": "identities", **intervals(draws)}
    if against is not None:
        other = bootstrap_draws(np.asarray(against[0], np.float32), np.asarray(against[1], np.float32), labels, counts)
        out["difference"] = intervals({k: draws[k] - other[k] for k in draws})
    return out


def markdown_row(name: str, metrics: dict) -> tuple[str, str]:
    far_text = "/".join(far_key(f) for f in FARS)
    header = ("| model | " + " | ".join(f"{PROTOCOL_LABELS[p]} TAR@{far_text} (%)" for p in PROTOCOLS)
              + " | rank-1 LR→HR (%) | threshold |")
    cells = [" / ".join(f"{100 * metrics['tar_at_far'][p][far_key(f)]:.1f}" for f in FARS) for p in PROTOCOLS]
    row = (f"| {name} | " + " | ".join(cells) + f" | {100 * metrics['rank1_lr_vs_hr']:.1f} | "
           f"{metrics['verify_threshold']:.4f} |")
    return header + "\n|" + "---|" * (len(PROTOCOLS) + 3), row


def plot_roc(curves: dict[str, tuple[np.ndarray, np.ndarray]], name: str, path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("eval: matplotlib is not installed; no ROC plot", file=sys.stderr)
        return False
    fig, ax = plt.subplots(figsize=(6, 4.5), dpi=120)
    for protocol, (fars, tars) in curves.items():
        if len(fars):
            ax.plot(fars, tars, label=PROTOCOL_LABELS[protocol])
    ax.set_xscale("log")
    ax.set_xlim(1e-5, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("FAR")
    ax.set_ylabel("TAR")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="lower right")
    ax.set_title(f"ROC: {name}")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return True


def evaluate_embeddings(hr: np.ndarray, lr: np.ndarray, identities: Sequence, heights: np.ndarray | None = None,
                        bootstrap: int = 0, seed: int = 0, against: tuple[np.ndarray, np.ndarray] | None = None
                        ) -> dict:
    """The metrics of the module docstring from embeddings: `hr[i]`, `lr[i]` embed the HR image i and its LR
    capture, `identities[i]` is its identity (strings or ints). Rows must be L2-normalised (scores are dot
    products). Returns `dim`, `tar_at_far`, `threshold_at_far`, `pairs`, `rank1_lr_vs_hr`, `rank1_probes`,
    `rank1_gallery_size`, `verify_threshold`, `hr_lr_tar_by_height` (with `heights`, the LR captures' heights),
    `bootstrap` (with `bootstrap` resamples > 0: `bootstrap_intervals`), `against` (with another model's (hr, lr)
    embeddings of the same images: its `tar_at_far` and `rank1_lr_vs_hr`, this model's minus its as `difference`,
    and with `bootstrap` the paired intervals of that difference as `difference_interval`) and `_curves` (ROC
    points per protocol, for `plot_roc`)."""
    hr, lr = np.asarray(hr, dtype=np.float32), np.asarray(lr, dtype=np.float32)
    _, labels = np.unique(np.asarray(identities), return_inverse=True)  # sorted identities -> 0..C-1
    labels = labels.reshape(-1)
    if hr.ndim != 2 or hr.shape != lr.shape or len(labels) != len(hr):
        raise ValueError(f"hr {hr.shape} and lr {lr.shape} must both be N x D with N = {len(labels)} identities")
    for what, emb in (("hr", hr), ("lr", lr)):
        norms = np.linalg.norm(emb, axis=1)
        if not np.all((np.abs(norms - 1.0) < 1e-3) | (norms == 0.0)):
            raise ValueError(f"{what} embeddings must be L2-normalised (norms {norms.min():.4g}..{norms.max():.4g})")

    metrics: dict = {"dim": int(hr.shape[1]), "tar_at_far": {}, "threshold_at_far": {}, "pairs": {}}
    curves = {}
    for protocol, (a, b, symmetric) in protocol_sets(hr, lr).items():
        genuine, impostor = pair_scores(a, b, labels, symmetric)
        impostor_desc = np.sort(impostor)[::-1]
        metrics["pairs"][protocol] = {"genuine": int(len(genuine)), "impostor": int(len(impostor))}
        metrics["tar_at_far"][protocol] = {}
        metrics["threshold_at_far"][protocol] = {}
        for far in FARS:
            tar, threshold = tar_at_far(genuine, impostor_desc, far)
            metrics["tar_at_far"][protocol][far_key(far)] = tar
            metrics["threshold_at_far"][protocol][far_key(far)] = threshold
        curves[protocol] = roc_curve(genuine, impostor_desc)
    rank1, probes, gallery = rank1_lr_vs_hr(hr, lr, labels)
    metrics.update(rank1_lr_vs_hr=rank1, rank1_probes=probes, rank1_gallery_size=gallery,
                   verify_threshold=metrics["threshold_at_far"]["hr_lr"][far_key(1e-3)])
    if heights is not None:  # the LR captures' heights in pixels
        metrics["hr_lr_tar_by_height"] = hr_lr_tar_by_height(hr, lr, labels, np.asarray(heights),
                                                             metrics["verify_threshold"])
    if against is not None:
        if len(against[0]) != len(hr) or len(against[1]) != len(lr):  # its dimension may differ
            raise ValueError("the model compared against must embed the same images")
        base = evaluate_embeddings(against[0], against[1], identities)
        metrics["against"] = {
            "tar_at_far": base["tar_at_far"], "rank1_lr_vs_hr": base["rank1_lr_vs_hr"],
            "difference": {"tar_at_far": {p: {k: metrics["tar_at_far"][p][k] - v for k, v in d.items()}
                                          for p, d in base["tar_at_far"].items()},
                           "rank1_lr_vs_hr": rank1 - base["rank1_lr_vs_hr"]}}
    if bootstrap:
        metrics["bootstrap"] = bootstrap_intervals(hr, lr, labels, bootstrap, seed, against=against)
        if against is not None:
            metrics["against"]["difference_interval"] = metrics["bootstrap"].pop("difference")
    metrics["_curves"] = curves
    return metrics


def evaluate_folder(data: Path, embed: EmbedFn, model: str, batch_size: int = 128, people: str = "all",
                    bootstrap: int = 0, seed: int = 0, against: tuple[EmbedFn, str] | None = None) -> dict:
    """Embed a dev-style folder's HR and LR images (of `people`: all, or the even / odd half, `in_people`) with
    `embed` (see `embed_files`) and score them with `evaluate_embeddings`; `model` is what the metrics' "model"
    field says; `bootstrap`, `seed`: see `evaluate_embeddings`; `against`: (embed function, name) of a second
    model scored on the same images and, with `bootstrap`, on the same resamples (`evaluate_embeddings`)."""
    if bootstrap < 0 or bootstrap == 1:
        raise ValueError(f"bootstrap must be 0 (off) or at least 2 resamples, got {bootstrap}")
    t0 = time.time()
    stems, identities, hr_paths, lr_paths = read_dev_folder(data, people)
    with ThreadPoolExecutor(max_workers=4) as pool:
        hr = embed_files(embed, hr_paths, batch_size, pool)
        lr = embed_files(embed, lr_paths, batch_size, pool)
        other = None if against is None else (embed_files(against[0], hr_paths, batch_size, pool),
                                              embed_files(against[0], lr_paths, batch_size, pool))
    embed_seconds = time.time() - t0
    scores = evaluate_embeddings(hr, lr, identities, read_lr_heights(data / "images.csv", stems), bootstrap, seed,
                                 other)
    if against is not None:
        scores["against"] = {"model": against[1], **scores["against"]}
    curves = scores.pop("_curves")
    metrics: dict = {"model": model, "data": str(data), "people": people, "images": len(stems),
                     "identities": len(set(identities)), **scores,
                     "embed_seconds": round(embed_seconds, 2), "total_seconds": round(time.time() - t0, 2)}
    metrics["_curves"] = curves
    return metrics


def evaluate(data: Path, model: Path, batch_size: int = 128, threads: int | None = None, people: str = "all",
             bootstrap: int = 0, seed: int = 0, against: Path | None = None) -> dict:
    """`evaluate_folder` with the inference core's `Embedder` on the ONNX `model` (+ its JSON sidecar), and on
    `against` (another embedder ONNX) where given."""
    embedder = Embedder(model, threads=threads or None, max_batch=batch_size)
    other = None
    if against is not None:
        other = (Embedder(against, threads=threads or None, max_batch=batch_size).embed, str(against))
    return evaluate_folder(data, embedder.embed, str(model), batch_size, people, bootstrap, seed, other)


def write_report(metrics: dict, name: str, out: Path, prog: str = "eval") -> dict:
    """Write `metrics_<name>.json` and `roc_<name>.png` under `out`, print the summary and the Markdown table
    row; returns the metrics as written (with "name", "markdown_row" and "roc_plot" added)."""
    out.mkdir(parents=True, exist_ok=True)
    metrics = dict(metrics)
    curves = metrics.pop("_curves")
    metrics = {"name": name, **metrics}
    header, row = markdown_row(name, metrics)
    metrics["markdown_row"] = row
    roc_path = out / f"roc_{name}.png"
    if plot_roc(curves, name, roc_path):
        metrics["roc_plot"] = str(roc_path)
    json_path = out / f"metrics_{name}.json"
    json_path.write_text(json.dumps(metrics, indent=2) + "\n")
    print(f"{prog}: {metrics['images']} images of {metrics['identities']} identities, embedded in "
          f"{metrics['embed_seconds']:.1f}s; {json_path}" + (f", {roc_path}" if "roc_plot" in metrics else ""))
    print(header)
    print(row)
    print(f"verify_threshold: {metrics['verify_threshold']:.4f}  (cosine, FAR 1e-3 on HR-LR pairs)")
    if "hr_lr_tar_by_height" in metrics:
        print("HR-LR TAR at it by capture height: " + ", ".join(
            f"{k} px {100 * v['tar']:.1f} % ({v['captures']} captures)" for k, v in metrics["hr_lr_tar_by_height"].items()))
    if "bootstrap" in metrics:
        b, k = metrics["bootstrap"], far_key(1e-3)
        print(f"{100 * b['level']:.0f} % intervals at FAR {k}, {b['resamples']} resamples of the people (seed "
              f"{b['seed']}): " + ", ".join(
                  f"{PROTOCOL_LABELS[p]} {100 * b['tar_at_far'][p][k][0]:.1f}-{100 * b['tar_at_far'][p][k][1]:.1f}"
                  for p in PROTOCOLS)
              + f", rank-1 {100 * b['rank1_lr_vs_hr'][0]:.1f}-{100 * b['rank1_lr_vs_hr'][1]:.1f} (%)")
    if "against" in metrics:
        a, k = metrics["against"], far_key(1e-3)
        diff, ci = a["difference"], a.get("difference_interval")

        def show(value: float, bounds: list[float] | None) -> str:
            return f"{100 * value:+.2f}" + (f" [{100 * bounds[0]:+.2f}, {100 * bounds[1]:+.2f}]" if bounds else "")
        print(f"against {a['model']} (this minus that, TAR at FAR {k}, points"
              + (", with the paired 95 % interval" if ci else "") + "): " + ", ".join(
                  f"{PROTOCOL_LABELS[p]} {show(diff['tar_at_far'][p][k], ci and ci['tar_at_far'][p][k])}"
                  for p in PROTOCOLS)
              + f", rank-1 {show(diff['rank1_lr_vs_hr'], ci and ci['rank1_lr_vs_hr'])}")
    return metrics


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="lrface eval", description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True, help="dev-style folder: hr/, lr/, images.csv")
    p.add_argument("--model", metavar="NAME|PATH", help="a shipped embedder by name (full, the default, or lite) "
                   "or an embedder ONNX (face -> embedding; its JSON sidecar next to it)")
    p.add_argument("--out", default="eval", help="where metrics_<name>.json and roc_<name>.png go (default ./eval)")
    p.add_argument("--name", help="name in file names and the table row (default: the model file's stem, "
                                  "with _even / _odd for a half)")
    p.add_argument("--people", choices=PEOPLE, default="all",
                   help="score all identities (default) or the even / odd half by the CRC-32 of their names")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--threads", type=int, help="onnxruntime intra-op threads")
    p.add_argument("--bootstrap", type=int, default=0, metavar="N",
                   help="also a 95 %% interval of every TAR and of rank-1 from N resamples of the people "
                        "(identities drawn with replacement; 0, the default, skips it; 1000 take about 40 s on dev after the embedding)")
    p.add_argument("--seed", type=int, default=0, help="the bootstrap's seed (default 0)")
    p.add_argument("--against", metavar="NAME|PATH",
                   help="a second embedder (name or ONNX) scored on the same images: the JSON and the printout "
                        "give this model's values minus its, and with --bootstrap a paired 95 %% interval of each "
                        "difference (both models on the same resampled people)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    model = embedder_path(args.model) or default_model_path("embedder")
    if not model.exists():
        raise SystemExit(f"eval: {model} not found")
    name = args.name or model.stem + ("" if args.people == "all" else f"_{args.people}")
    try:
        against = None
        if args.against:
            against = embedder_path(args.against)
            if against is None or not against.exists():
                raise SystemExit(f"eval: {args.against} not found (--against takes full, lite or an ONNX file)")
        metrics = evaluate(Path(args.data), model, args.batch_size, args.threads, args.people, args.bootstrap,
                           args.seed, against)
    except (ModelNotFoundError, ValueError) as exc:  # no sidecar, not the embedder contract, bad arguments
        raise SystemExit(f"eval: {exc}") from None
    write_report(metrics, name, Path(args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
