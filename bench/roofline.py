"""Against the limit: each model's FLOPs per image (from its ONNX graph), the GFLOP/s onnxruntime achieves at
batch 32, and the machine's fp32 matmul peak measured in the same run (numpy and torch, same thread count).

FLOPs = 2 x multiply-adds of the Conv / ConvTranspose / Gemm / MatMul nodes at batch 1 (bench/flops.py).

    python -m bench.roofline --mrgan M.onnx --embedder E.onnx [--quick]
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import (base_parser, check_models, child_env, exit_on_sigterm, fmt, md_table, report, run_json_child,
                          save_result, time_calls)
from bench.flops import count_flops


def matmul_child(args) -> dict:
    """GFLOP/s of an n x n float32 matmul: numpy (its BLAS, pinned by *_NUM_THREADS) and torch."""
    import numpy as np

    n = args.n
    flops = 2.0 * n ** 3
    budget = {"min_seconds": 0.5 if args.quick else 3.0, "min_iters": 3, "warmup": 1}
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n), dtype=np.float32)
    b = rng.standard_normal((n, n), dtype=np.float32)
    out = {"n": n, "threads": args.threads}
    t = time_calls(lambda: a @ b, **budget)
    out["numpy"] = {"median_gflops": flops / t["median_s"] / 1e9, "best_gflops": flops / t["best_s"] / 1e9, **t}
    try:
        import torch

        torch.set_num_threads(args.threads)
        ta, tb = torch.from_numpy(a), torch.from_numpy(b)
        t = time_calls(lambda: torch.mm(ta, tb), **budget)
        out["torch"] = {"median_gflops": flops / t["median_s"] / 1e9, "best_gflops": flops / t["best_s"] / 1e9, **t}
    except ImportError:
        out["torch"] = None
    return out


def main(argv: list[str] | None = None) -> int:
    exit_on_sigterm()
    p = base_parser("python -m bench.roofline", __doc__.split("\n\n")[0])
    p.add_argument("--batch", type=int, default=32, help="batch of the achieved-throughput measurement (default 32)")
    p.add_argument("--n", type=int, default=None, help="matmul size (default 2048; 1024 with --quick)")
    p.add_argument("--child", choices=("matmul",), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.n = args.n or (1024 if args.quick else 2048)
    if args.child == "matmul":
        print(json.dumps(matmul_child(args)))
        return 0
    check_models(args.mrgan, args.embedder)
    env = child_env(threads=args.threads)
    quick = ["--quick"] if args.quick else []
    print("roofline: matmul peak ...", file=sys.stderr, flush=True)
    peak = run_json_child([sys.executable, "-m", "bench.roofline", "--child", "matmul", "--n", str(args.n),
                           "--threads", str(args.threads)] + quick, env, timeout=600)
    engines = {k: v for k, v in (("numpy", peak["numpy"]), ("torch", peak.get("torch"))) if v}
    peak_name = max(engines, key=lambda k: engines[k]["median_gflops"])
    peak_median = engines[peak_name]["median_gflops"]
    peak_best = max(v["best_gflops"] for v in engines.values())
    models = {}
    for name, path in (("mrgan", args.mrgan), ("embedder", args.embedder)):
        print(f"roofline: {name} FLOPs and batch-{args.batch} throughput ...", file=sys.stderr, flush=True)
        flops = count_flops(path)
        run = run_json_child([sys.executable, "-m", "bench.throughput", "--child", "onnxruntime", "--model", name,
                              "--path", str(path), "--threads", str(args.threads), "--batches", str(args.batch)] + quick,
                             env, timeout=1200)
        b = run["batches"][str(args.batch)]
        achieved = flops["flops"] * args.batch / b["median_s"] / 1e9
        achieved_best = flops["flops"] * args.batch / b["best_s"] / 1e9
        models[name] = {"flops_per_image": flops["flops"], "gflops_per_image": flops["flops"] / 1e9,
                        "flops_by_op": flops["by_op"], "counted_nodes": flops["nodes"], "parameters": flops["parameters"],
                        "shapes_measured_by_ort": flops["shapes_measured_by_ort"], "batch": args.batch,
                        "items_per_s": b["items_per_s"], "achieved_gflops": achieved,
                        "achieved_gflops_best": achieved_best, "fraction_of_peak": achieved / peak_median,
                        "fraction_of_peak_best": achieved_best / peak_best, "path": str(path)}
    headers = ["model", "GFLOP / image", "params", f"batch {args.batch} items/s", "achieved GFLOP/s",
               f"matmul peak GFLOP/s ({peak_name})", "% of peak", "% of peak (best calls)"]
    rows = [[name, f"{m['gflops_per_image']:.3f}", fmt(m["parameters"]), fmt(m["items_per_s"]), fmt(m["achieved_gflops"]),
             fmt(peak_median), f"{100 * m['fraction_of_peak']:.0f}%", f"{100 * m['fraction_of_peak_best']:.0f}%"]
            for name, m in models.items()]
    table = md_table(headers, rows)
    notes = [
        f"peak: {args.n}x{args.n} float32 matmul, {args.threads} threads, median of repeated calls: numpy "
        f"{fmt(peak['numpy']['median_gflops'])} GFLOP/s" + (f", torch {fmt(peak['torch']['median_gflops'])} GFLOP/s"
                                                            if peak.get("torch") else "")
        + f"; best single call {fmt(peak_best)} GFLOP/s",
        "achieved = FLOPs per image x images/s (onnxruntime, median call); the '% of peak' columns compare medians "
        "with medians and best calls with best calls",
        "FLOPs count 2 x multiply-adds of Conv / ConvTranspose / Gemm / MatMul only (shapes from onnx.shape_inference "
        "at batch 1, the rest measured by running the graph once)",
    ]
    path = save_result(args, "roofline", {"title": "Against the limit", "table_md": table, "notes": notes,
                                          "matmul": peak, "peak_engine": peak_name, "peak_gflops": peak_median,
                                          "peak_gflops_best": peak_best, "models": models, "threads": args.threads})
    report("Against the limit", table, notes, path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
