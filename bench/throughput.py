"""Model throughput: MR-GAN synthesis (variants/s) and embedding (faces/s) at batch 1, 8, 32.

Engines, each in its own process (so its peak resident memory is its own) with the same thread count:
- `onnxruntime`: the ONNX model in an InferenceSession configured as the inference core configures it
  (intra-op threads = --threads, inter-op 1), fed pre-made float32 batches: the model alone.
- `core`: the same through `lrface.core.synthesizer` / `lrface.core.embedder` (`Synthesizer.synthesize` / `Embedder.embed`, max_batch = the
  batch): adds uint8 -> canvas -> float input and, for synthesis, the resize to the native LR size.
- `torch`: the same network in eager torch under `torch.inference_mode()` (bench/torch_models.py), from
  --mrgan-ckpt / --embedder-ckpt, or else rebuilt from the ONNX file itself (architecture from the sidecar,
  weights from the graph), so no checkpoint is needed; a parity check against onnxruntime says it is the same.

    python -m bench.throughput --mrgan M.onnx --embedder E.onnx [--mrgan-ckpt M.pt --embedder-ckpt E.pt] [--quick]
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import (base_parser, check_models, child_env, exit_on_sigterm, fmt, md_table, peak_rss_mib, report,
                          rss_mib, run_json_child, save_result, time_calls)

ENGINES = ("onnxruntime", "core", "torch")
MODELS = ("mrgan", "embedder")
UNITS = {"mrgan": "variants/s", "embedder": "faces/s"}


def timing_budget(quick: bool) -> dict:
    return {"min_seconds": 0.3, "min_iters": 2, "warmup": 1} if quick else {"min_seconds": 3.0, "min_iters": 5, "warmup": 2}


# -- child: one engine, one model --------------------------------------------------------------------------------

def _inputs(model: str, batch: int, z_dim: int, seed: int = 0) -> dict:
    import numpy as np

    rng = np.random.default_rng(seed)
    feed = {"face": rng.uniform(-1, 1, (batch, 3, 112, 96)).astype(np.float32)}
    if model == "mrgan":
        feed["z"] = rng.standard_normal((batch, z_dim)).astype(np.float32)
        feed["scale"] = (rng.integers(18, 57, (batch, 1)) / 112.0).astype(np.float32)
        feed["noise"] = rng.standard_normal((batch, 3, 112, 96)).astype(np.float32)
    return feed


def _z_dim(onnx_path: str) -> int:
    meta = json.loads(Path(onnx_path).with_suffix(".json").read_text())
    return int(meta.get("z_dim", 0))


def child(args) -> dict:
    base_rss = rss_mib()
    batches = [int(b) for b in args.batches.split(",")]
    budget = timing_budget(args.quick)
    z_dim = _z_dim(args.path) if args.model == "mrgan" else 0
    out = {"engine": args.child, "model": args.model, "path": str(args.path), "threads": args.threads, "batches": {}}
    t0 = time.perf_counter()
    if args.child == "onnxruntime":
        import onnxruntime as ort

        base_rss = rss_mib()
        options = ort.SessionOptions()
        options.intra_op_num_threads = args.threads
        options.inter_op_num_threads = 1
        session = ort.InferenceSession(str(args.path), sess_options=options, providers=["CPUExecutionProvider"])
        out["built"] = "onnxruntime InferenceSession, CPUExecutionProvider"
        names = {i.name for i in session.get_inputs()}  # a generator without the sensor stage has no `noise`
        make = lambda b: (lambda feed={k: v for k, v in _inputs(args.model, b, z_dim).items() if k in names}:  # noqa: E731
                          session.run(None, feed))
    elif args.child == "core":
        from bench.common import jitter, source_faces
        from lrface.core.embedder import Embedder
        from lrface.core.synthesizer import Synthesizer

        import numpy as np

        faces, _ = source_faces(8)
        rng = np.random.default_rng(0)
        pool = [jitter(faces[i % len(faces)], rng) for i in range(max(batches))]
        base_rss = rss_mib()
        cls = Synthesizer if args.model == "mrgan" else Embedder
        engine = cls(args.path, providers=["CPUExecutionProvider"], threads=args.threads, max_batch=max(batches))
        out["built"] = f"{cls.__module__}.{cls.__name__}"

        def make(b):
            keys = [f"face_{i}.jpg" for i in range(b)]
            if args.model == "mrgan":
                return lambda: engine.synthesize(pool[:b], keys=keys, variants=1, seed=0)
            return lambda: engine.embed(pool[:b])
    else:
        import torch

        torch.set_num_threads(args.threads)
        try:
            torch.set_num_interop_threads(1)
        except RuntimeError:
            pass
        from bench.torch_models import load_eager

        base_rss = rss_mib()
        module, how = load_eager(args.path, args.ckpt, args.model)
        out["built"] = how
        if module is None:
            out["skipped"] = how
            return out

        def make(b):
            feed = [torch.from_numpy(v) for v in _inputs(args.model, b, z_dim).values()]

            def call():
                with torch.inference_mode():
                    return module(*feed)
            return call
    out["load_s"] = time.perf_counter() - t0
    for b in batches:
        t = time_calls(make(b), **budget)
        out["batches"][str(b)] = {**t, "items_per_s": b / t["median_s"], "ms_per_batch": 1000 * t["median_s"]}
    out["peak_rss_mib"] = peak_rss_mib()
    out["rss_after_imports_mib"] = base_rss
    if args.child == "torch":
        out["parity_max_abs_diff"] = _parity(module, args)
    return out


def _parity(module, args) -> float:
    """Max |torch - onnxruntime| on one batch of 2 (after the memory was read): are they the same network?"""
    import numpy as np
    import onnxruntime as ort
    import torch

    feed = _inputs(args.model, 2, _z_dim(args.path) if args.model == "mrgan" else 0, seed=1)
    session = ort.InferenceSession(str(args.path), providers=["CPUExecutionProvider"])
    (ref,) = session.run(None, {i.name: feed[i.name] for i in session.get_inputs()})
    with torch.inference_mode():
        got = module(*[torch.from_numpy(v) for v in feed.values()]).numpy()
    return float(np.abs(got - ref).max())


# -- parent ------------------------------------------------------------------------------------------------------

def run_engine(args, engine: str, model: str, batches: list[int]) -> dict:
    path = args.mrgan if model == "mrgan" else args.embedder
    ckpt = args.mrgan_ckpt if model == "mrgan" else args.embedder_ckpt
    cmd = [sys.executable, "-m", "bench.throughput", "--child", engine, "--model", model, "--path", str(path),
           "--threads", str(args.threads), "--batches", ",".join(map(str, batches))]
    if ckpt is not None:
        cmd += ["--ckpt", str(ckpt)]
    if args.quick:
        cmd.append("--quick")
    try:
        return run_json_child(cmd, child_env(threads=args.threads), timeout=1800)
    except Exception as exc:  # one engine failing (torch missing, bad checkpoint) must not lose the others
        return {"engine": engine, "model": model, "error": str(exc)[-1500:], "batches": {}}


def merge_rounds(raw: list[dict]) -> list[dict]:
    """One result per (model, engine): per batch the median rate and time over the rounds (with every round's
    rate), the largest peak RSS; the rest (how it was built, parity) from the first round."""
    merged: dict[tuple[str, str], dict] = {}
    for r in raw:
        key = (r["model"], r["engine"])
        m = merged.setdefault(key, {k: v for k, v in r.items() if k not in ("batches", "round")} | {"batches": {}})
        if r.get("peak_rss_mib") is not None:
            m["peak_rss_mib"] = max(m.get("peak_rss_mib") or 0, r["peak_rss_mib"])
        for b, v in r.get("batches", {}).items():
            m["batches"].setdefault(b, []).append(v)
    for m in merged.values():
        for b, runs in m["batches"].items():
            m["batches"][b] = {"items_per_s": statistics.median(v["items_per_s"] for v in runs),
                               "ms_per_batch": statistics.median(v["ms_per_batch"] for v in runs),
                               "rounds_items_per_s": [v["items_per_s"] for v in runs]}
    return list(merged.values())


def paired_ratios(raw: list[dict], batches: list[int]) -> dict:
    """onnxruntime / torch per model and batch: each round's ratio (both measured minutes apart at most) and
    their median."""
    out: dict = {}
    for model in MODELS:
        for b in map(str, batches):
            per_round = []
            for rnd in sorted({r["round"] for r in raw}):
                rates = {r["engine"]: r.get("batches", {}).get(b, {}).get("items_per_s")
                         for r in raw if r["model"] == model and r["round"] == rnd}
                if rates.get("onnxruntime") and rates.get("torch"):
                    per_round.append(rates["onnxruntime"] / rates["torch"])
            if per_round:
                out.setdefault(model, {})[b] = {"median": statistics.median(per_round), "rounds": per_round}
    return out


def build_table(results: list[dict], batches: list[int], ratios: dict | None = None,
                rounds: int = 1) -> tuple[str, list[str]]:
    headers = ["model", "engine"] + [f"batch {b} /s" for b in batches] + \
              [f"batch {batches[0]} ms", "peak RSS MiB", "RSS after imports MiB"]
    rows, notes = [], []
    by = {(r["model"], r["engine"]): r for r in results}
    for model in MODELS:
        for engine in ENGINES:
            r = by.get((model, engine))
            if r is None:
                continue
            if not r.get("batches"):
                rows.append([model, engine] + ["–"] * (len(batches) + 3))
                notes.append(f"{model} / {engine}: {r.get('skipped') or r.get('error', 'not measured').splitlines()[-1]}")
                continue
            bt = r["batches"]
            rows.append([model, engine] + [fmt(bt[str(b)]["items_per_s"]) if str(b) in bt else "–" for b in batches]
                        + [fmt(bt[str(batches[0])]["ms_per_batch"], 2) if str(batches[0]) in bt else "–",
                           fmt(r.get("peak_rss_mib"), 0), fmt(r.get("rss_after_imports_mib"), 0)])
            if engine == "torch":
                notes.append(f"{model} / torch: {r.get('built')}"
                             + (f"; parity with the ONNX model: max abs diff {r['parity_max_abs_diff']:.1e}"
                                if "parity_max_abs_diff" in r else ""))
        if (ratios or {}).get(model):
            rows.append([model, "**onnxruntime / torch**"] +
                        [f"{ratios[model][str(b)]['median']:.2f}x" if str(b) in ratios[model] else "–"
                         for b in batches] + ["", "", ""])
            spread = "; ".join(f"batch {b}: " + ", ".join(f"{x:.2f}x" for x in ratios[model][str(b)]["rounds"])
                               for b in batches if str(b) in ratios[model])
            if rounds > 1:
                notes.append(f"{model}: onnxruntime / torch in each round: {spread}")
    notes.append(f"units: {UNITS['mrgan']} for mrgan, {UNITS['embedder']} for embedder; rate = batch / median "
                 f"time per call; one process per engine and model, so each peak RSS is that engine's alone"
                 + (f"; {rounds} rounds of every engine in turn: the rates are medians over the rounds, each "
                    f"ratio the median of the rounds' own ratios" if rounds > 1 else ""))
    return md_table(headers, rows), notes


def main(argv: list[str] | None = None) -> int:
    exit_on_sigterm()
    p = base_parser("python -m bench.throughput", __doc__.split("\n\n")[0])
    p.add_argument("--mrgan-ckpt", type=Path, help="MR-GAN training checkpoint for the eager-torch run")
    p.add_argument("--embedder-ckpt", type=Path, help="embedder (ran / embedder kind) checkpoint for the eager-torch run")
    p.add_argument("--batches", default="1,8,32")
    p.add_argument("--engines", default=",".join(ENGINES))
    p.add_argument("--models", default=",".join(MODELS))
    p.add_argument("--rounds", type=int, default=None,
                   help="rounds of every engine in turn (default 3; 1 with --quick): rates are the medians over the "
                        "rounds and each onnxruntime / torch ratio the median of the rounds' own ratios, so a slow "
                        "spell of a shared machine does not land on one engine only")
    # child mode
    p.add_argument("--child", choices=ENGINES, help=argparse.SUPPRESS)
    p.add_argument("--model", choices=MODELS, help=argparse.SUPPRESS)
    p.add_argument("--path", help=argparse.SUPPRESS)
    p.add_argument("--ckpt", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        print(json.dumps(child(args)))
        return 0
    models = [m for m in args.models.split(",") if m]
    check_models(*[args.mrgan if m == "mrgan" else args.embedder for m in models])
    batches = [int(b) for b in args.batches.split(",")]
    rounds = args.rounds or (1 if args.quick else 3)
    raw = []
    for rnd in range(rounds):
        for model in models:
            for engine in [e for e in args.engines.split(",") if e]:
                print(f"throughput: round {rnd + 1}/{rounds}, {model} / {engine} ...", file=sys.stderr, flush=True)
                raw.append({**run_engine(args, engine, model, batches), "round": rnd})
    results = merge_rounds(raw)
    ratios = paired_ratios(raw, batches)
    table, notes = build_table(results, batches, ratios, rounds)
    path = save_result(args, "throughput", {
        "title": "Model throughput", "table_md": table, "notes": notes, "results": results, "ratios": ratios,
        "rounds": rounds, "raw": raw,
        "threads": args.threads, "models": {"mrgan": str(args.mrgan), "embedder": str(args.embedder)},
        "checkpoints": {"mrgan": str(args.mrgan_ckpt) if args.mrgan_ckpt else None,
                        "embedder": str(args.embedder_ckpt) if args.embedder_ckpt else None},
    })
    report("Model throughput", table, notes, path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
