"""Cost curve: wall time and peak resident memory of `lrface augment` at 500, 1,000, 2,000 and 4,000 input faces.

Each size is a fresh `lrface augment` process (K variants, --threads threads) on the first n faces of one
jittered face set (hard links, so only the count differs), peak RSS from wait4's ru_maxrss. Expected: time
linear in n (a constant start-up plus a constant cost per face) and memory flat (within 20%).

    python -m bench.cost_curve --mrgan M.onnx [--sizes 500,1000,2000,4000] [--variants 4] [--quick]
"""
from __future__ import annotations

import json
import shutil
import sys
import tempfile
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import (base_parser, check_models, child_env, exit_on_sigterm, fmt, link_subset, make_face_tree,
                          md_table, report, run_measured, save_result)

TOLERANCE = json.loads((Path(__file__).resolve().parent / "targets.json").read_text())["cost_curve"]["tolerance"]


def linearity(sizes: list[int], times: list[float]) -> dict:
    """Least-squares t = a + b n. Linear when every point is within 20% of that line and the per-face cost of
    the last (largest) step is within 20% of the fitted b: a cost that grows with n shows up in both."""
    import numpy as np

    n = np.asarray(sizes, dtype=float)
    t = np.asarray(times, dtype=float)
    b, a = np.polyfit(n, t, 1)
    fit = a + b * n
    worst = float(np.max(np.abs(t - fit) / t))
    steps = [(times[i + 1] - times[i]) / (sizes[i + 1] - sizes[i]) for i in range(len(sizes) - 1)]
    ss_res = float(np.sum((t - fit) ** 2))
    ss_tot = float(np.sum((t - t.mean()) ** 2)) or 1.0
    growth = float(steps[-1] / b - 1) if steps and b > 0 else None
    return {"startup_s": float(a), "s_per_face": float(b), "r2": 1 - ss_res / ss_tot, "max_rel_residual": worst,
            "marginal_s_per_face": steps, "last_step_over_slope": growth,
            "linear": bool(worst <= TOLERANCE and (growth is None or growth <= TOLERANCE))}


def main(argv: list[str] | None = None) -> int:
    exit_on_sigterm()
    p = base_parser("python -m bench.cost_curve", __doc__.split("\n\n")[0])
    p.add_argument("--sizes", default=None, help="input face counts (default 500,1000,2000,4000; 16,32,64,128 with --quick)")
    p.add_argument("--variants", "-k", type=int, default=4)
    p.add_argument("--workdir", type=Path, default=None, help="scratch folder (default: a temp folder, removed after)")
    args = p.parse_args(argv)
    check_models(args.mrgan)
    sizes = [int(s) for s in (args.sizes or ("16,32,64,128" if args.quick else "500,1000,2000,4000")).split(",")]
    keep = args.workdir is not None
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="lrface-bench-cost-"))
    workdir.mkdir(parents=True, exist_ok=True)
    runs = []
    try:
        print(f"cost: writing {max(sizes)} input faces ...", file=sys.stderr, flush=True)
        rels = make_face_tree(workdir / "all", max(sizes))
        env = child_env(threads=args.threads)
        for n in sizes:
            src = workdir / f"in-{n}"
            link_subset(workdir / "all", rels[:n], src)
            out = workdir / f"out-{n}"
            shutil.rmtree(out, ignore_errors=True)
            print(f"cost: lrface augment on {n} faces ...", file=sys.stderr, flush=True)
            r = run_measured([sys.executable, "-m", "lrface.service.cli", "augment", str(src), str(out), "-k", str(args.variants),
                              "--seed", "0", "--model", str(args.mrgan), "--threads", str(args.threads), "--device", "cpu"],
                             env, workdir / f"augment-{n}.log")
            r["pngs"] = sum(1 for _ in out.rglob("*.png"))
            shutil.rmtree(out, ignore_errors=True)
            runs.append({"faces": n, **r})
    finally:
        if not keep:
            shutil.rmtree(workdir, ignore_errors=True)
    lin = linearity([r["faces"] for r in runs], [r["wall_s"] for r in runs])
    mems = [r["peak_rss_mib"] for r in runs]
    mem_spread = max(mems) / min(mems) - 1
    headers = ["faces", "images", "wall s", "ms / face", "images/s", "peak RSS MiB", "CPU s"]
    rows = [[fmt(r["faces"]), fmt(r["pngs"]), fmt(r["wall_s"]), fmt(1000 * r["wall_s"] / r["faces"]),
             fmt(r["pngs"] / r["wall_s"]), fmt(r["peak_rss_mib"], 0), fmt(r["cpu_s"])] for r in runs]
    table = md_table(headers, rows)
    notes = [
        f"fit t = {lin['startup_s']:.2f} s + {1000 * lin['s_per_face']:.1f} ms x faces (R² {lin['r2']:.4f}); largest "
        f"miss of the line {lin['max_rel_residual']:.0%}; marginal ms/face per step "
        + ", ".join(f"{1000 * s:.1f}" for s in lin["marginal_s_per_face"])
        + (f" (last step {lin['last_step_over_slope']:+.0%} against the fit)" if lin["last_step_over_slope"] is not None else ""),
        f"peak RSS {min(mems):.0f}–{max(mems):.0f} MiB (spread {mem_spread:.0%})",
        f"{args.variants} variants per face, {args.threads} threads, one fresh process per size (start-up included)",
    ]
    path = save_result(args, "cost_curve", {"title": "Cost curve of lrface augment", "table_md": table, "notes": notes,
                                            "runs": runs, "linearity": lin, "memory_spread": mem_spread,
                                            "flat_memory": bool(mem_spread <= TOLERANCE), "tolerance": TOLERANCE,
                                            "variants": args.variants, "threads": args.threads})
    report("Cost curve of lrface augment", table, notes, path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
