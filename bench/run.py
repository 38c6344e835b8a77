"""`lrface bench` / `python -m bench.run`: run the benchmarks (all, or those named) and write bench/RESULTS.md.

    python -m bench.run [throughput roofline http bulk cost] [--quick] --mrgan M.onnx --embedder E.onnx \
        [--mrgan-ckpt M.pt --embedder-ckpt E.pt]

Each benchmark runs as its own process and writes bench/results/<name>.json; RESULTS.md is then built from
the JSON files (a benchmark not run this time is reported from its last JSON, with its date), with the machine,
the date, every table and a Targets section. --quick runs the smoke versions and writes bench/results/quick/
and bench/results/quick/RESULTS.md instead, so a smoke run never overwrites the full results.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import (QUICK_RESULTS_DIR, REPO, RESULTS_DIR, child_env, cpu_count, default_model_path,
                          exit_on_sigterm, fmt, machine, md_table)

# name -> (module, JSON name)
BENCHMARKS = {
    "throughput": ("bench.throughput", "throughput"),
    "roofline": ("bench.roofline", "roofline"),
    "http": ("bench.http_api", "http"),
    "bulk": ("bench.bulk", "bulk"),
    "cost": ("bench.cost_curve", "cost_curve"),
}
MODEL_ARGS = ("mrgan", "embedder")
# The targets RESULTS.md judges: data, not code.
TARGETS = json.loads((Path(__file__).resolve().parent / "targets.json").read_text())


def load(results: Path, name: str) -> dict | None:
    path = results / f"{name}.json"
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _status(ok: bool | None) -> str:
    return "–" if ok is None else ("met" if ok else "**MISSED**")


def _rate(tp: dict | None, model: str, engine: str, batch: int) -> float | None:
    if not tp:
        return None
    for r in tp.get("results", []):
        if r.get("model") == model and r.get("engine") == engine:
            b = r.get("batches", {}).get(str(batch))
            return b["items_per_s"] if b else None
    return None


def _ms(tp: dict | None, model: str, engine: str, batch: int) -> float | None:
    if not tp:
        return None
    for r in tp.get("results", []):
        if r.get("model") == model and r.get("engine") == engine:
            b = r.get("batches", {}).get(str(batch))
            return b["ms_per_batch"] if b else None
    return None


def _paired_http_targets(paired: dict[str, list[dict]]) -> list[list[str]]:
    """The two /v1/embed targets from http.json's paired rounds (each round: the model alone, then the server):
    the median over the rounds of each round's own ratio; throughput judged on the better server setting."""
    t_tp, t_p99 = TARGETS["http_embed_throughput"], TARGETS["http_p99"]

    def setting(label: str) -> str:
        n = int(label[3:-1]) if label.startswith("on-") else 1
        return f"{n} API process{'es' if n > 1 else ''}"

    rows = []
    shares = {label: statistics.median(r["c32_items_per_s"] / r["model_b32_items_per_s"] for r in rounds)
              for label, rounds in paired.items() if rounds}
    if shares:
        best = max(shares, key=shares.get)
        per = "; ".join(f"{setting(label)}: " + ", ".join(f"{r['c32_items_per_s'] / r['model_b32_items_per_s']:.0%}"
                                                        for r in paired[label]) + f" (median {shares[label]:.0%})"
                        for label in shares)
        b = paired[best]
        measured = (f"median of {len(b)} paired rounds {shares[best]:.0%} with {setting(best)} (last round "
                    f"{fmt(b[-1]['c32_items_per_s'])} vs {fmt(b[-1]['model_b32_items_per_s'])} faces/s); per round: {per}")
        rows.append([f"HTTP /v1/embed throughput at concurrency {t_tp['concurrency']} >= "
                     f"{t_tp['min_share_of_offline_batch']:.0%} of offline batch-{t_tp['concurrency']} throughput "
                     "(one face per request, micro-batching on, better of the API process settings)",
                     measured, _status(shares[best] >= t_tp["min_share_of_offline_batch"])])
    rounds = paired.get("on") or next(iter(paired.values()), [])
    if rounds:
        ratios = [r["c1_p99_ms"] / r["model_b1_ms"] for r in rounds]
        ratio = statistics.median(ratios)
        measured = (f"median of {len(rounds)} paired rounds {ratio:.1f}x; per round: "
                    + ", ".join(f"p99 {fmt(r['c1_p99_ms'])} ms vs {fmt(r['model_b1_ms'], 2)} ms ({x:.1f}x)"
                                for r, x in zip(rounds, ratios)))
        rows.append([f"HTTP /v1/embed p99 at concurrency {t_p99['concurrency']} < {t_p99['max_over_model_time']:g}x the "
                     "batch-1 model time (micro-batching on, one API process)", measured,
                     _status(ratio < t_p99["max_over_model_time"])])
    return rows


def _single_http_throughput_row(level, multi: list[int], offline: float | None) -> list[str]:
    """The concurrency-32 /v1/embed target from the table's rows (a run without paired rounds), judged on the
    better of the micro-batching settings: one API process, or N processes (--api-processes N)."""
    e32, off32 = level("embed", 32), level("embed", 32, micro_batch=False)
    candidates = [(1, e32)] + [(n, level("embed", 32, processes=n)) for n in multi]
    candidates = [(n, r) for n, r in candidates if r is not None]
    best = max(candidates, key=lambda c: c[1]["items_per_s"])[1] if candidates else None
    share = TARGETS["http_embed_throughput"]["min_share_of_offline_batch"]
    ok = None if best is None or offline is None else best["items_per_s"] >= share * offline
    measured = "not measured"
    if ok is not None:
        parts = [f"{n} API process{'es' if n > 1 else ''}: {fmt(r['items_per_s'])} = {r['items_per_s'] / offline:.0%}"
                 for n, r in candidates]
        measured = (f"{fmt(best['items_per_s'])} vs {fmt(offline)} faces/s = {best['items_per_s'] / offline:.0%} "
                    f"({'; '.join(parts)}")
        if off32 is not None and "micro_batch" in off32:
            measured += f"; 1 process, micro-batching off: {fmt(off32['items_per_s'])} = {off32['items_per_s'] / offline:.0%}"
        measured += ")"
    return [f"HTTP /v1/embed throughput at concurrency 32 >= {share:.0%} of offline batch-32 throughput "
            f"(one face per request, micro-batching on{f', best of 1 and {multi} API processes' if multi else ''})",
            measured, _status(ok)]


def targets(data: dict[str, dict | None]) -> list[list[str]]:
    """Rows (target, measured, status) of the issue's targets, from whatever JSON is there."""
    tp, rl, http, bulk, cost = (data.get(k) for k in ("throughput", "roofline", "http", "bulk", "cost_curve"))
    rows = []
    # 1. onnxruntime >= N x eager torch at batch 32
    min_ratio = TARGETS["onnxruntime_over_torch"]["min_ratio"]
    for model in MODEL_ARGS:
        o, t = _rate(tp, model, "onnxruntime", 32), _rate(tp, model, "torch", 32)
        paired = ((tp or {}).get("ratios") or {}).get(model, {}).get("32")
        ratio = paired["median"] if paired else (o / t if o and t else None)
        ok = None if o is None or t is None or ratio is None else ratio >= min_ratio
        measured = f"{fmt(o)} vs {fmt(t)} /s = {ratio:.2f}x" if ok is not None else "not measured"
        if ok is not None and paired and len(paired["rounds"]) > 1:
            measured = (f"{fmt(o)} vs {fmt(t)} /s (medians of {len(paired['rounds'])} rounds); ratio per round "
                        + ", ".join(f"{x:.2f}x" for x in paired["rounds"]) + f", median {ratio:.2f}x")
        rows.append([f"{model}: onnxruntime at batch 32 >= {min_ratio:g}x eager torch", measured, _status(ok)])
    # 2. achieved GFLOP/s at batch 32 >= a share of the matmul peak
    min_fraction = TARGETS["matmul_peak"]["min_fraction"]
    for model in MODEL_ARGS:
        m = (rl or {}).get("models", {}).get(model)
        ok = None if m is None else m["fraction_of_peak"] >= min_fraction
        measured = (f"{fmt(m['achieved_gflops'])} of {fmt(rl['peak_gflops'])} GFLOP/s = {m['fraction_of_peak']:.0%}"
                    if m else "not measured")
        rows.append([f"{model}: achieved GFLOP/s at batch 32 >= {min_fraction:.0%} of the measured matmul peak", measured,
                     _status(ok)])
    # 3. HTTP, against the models alone measured in the same run (http.json's reference), else throughput.json.
    # The targets are judged on the server's default setting (micro-batching on) with one face per request; the
    # other setting and the batch form are shown next to it.
    def level(endpoint, concurrency, micro_batch=True, images=1, processes=1):
        for r in (http or {}).get("results", []):
            # (results from before micro-batching carry no such key: they match either setting)
            if (r["endpoint"], r["concurrency"], r.get("micro_batch", micro_batch), r.get("images_per_request", 1),
                    r.get("api_processes", 1)) == (endpoint, concurrency, micro_batch, images, processes):
                return r
        return None

    multi = sorted({r["api_processes"] for r in (http or {}).get("results", []) if r.get("api_processes", 1) > 1})
    ref = (http or {}).get("reference") or {}
    offline = (ref.get("embedder", {}).get("32") or {}).get("items_per_s") or _rate(tp, "embedder", "onnxruntime", 32)
    # The /v1/embed targets: on the paired rounds when the run made them, else on the table's rows.
    paired = (http or {}).get("target_rounds") or {}
    if paired:
        rows += _paired_http_targets(paired)
    else:
        rows.append(_single_http_throughput_row(level, multi, offline))
    extra = [r for r in (http or {}).get("results", []) if r.get("images_per_request", 1) > 1 and r.get("micro_batch", True)]
    if extra and offline:
        r = extra[0]
        rows.append([f"(not a target) the same with {r['images_per_request']} faces per request, concurrency "
                     f"{r['concurrency']}", f"{fmt(r['items_per_s'])} vs {fmt(offline)} faces/s = "
                     f"{r['items_per_s'] / offline:.0%}", "–"])
    variants = str((http or {}).get("variants", 1))
    max_over = TARGETS["http_p99"]["max_over_model_time"]
    for endpoint, model in (("embed", "embedder"), ("synthesize", "mrgan")):
        if endpoint == "embed" and paired:
            continue  # (judged on the paired rounds above)
        r1, off1 = level(endpoint, 1), level(endpoint, 1, micro_batch=False)
        batch = "1" if endpoint == "embed" else variants
        base = (ref.get(model, {}).get(batch) or {}).get("ms_per_batch") or _ms(tp, model, "onnxruntime", int(batch))
        ok = None if r1 is None or base is None or r1["p99_ms"] is None else r1["p99_ms"] < max_over * base
        what = "batch-1" if batch == "1" else f"batch-{batch} ({batch} variants per request)"
        measured = "not measured"
        if ok is not None:
            measured = (f"p99 {fmt(r1['p99_ms'])} ms vs {max_over:g} x {fmt(base, 2)} ms = {fmt(max_over * base)} ms "
                        f"({r1['p99_ms'] / base:.1f}x)")
            if off1 is not None and "micro_batch" in off1 and off1["p99_ms"] is not None:
                measured += f" (micro-batching off: p99 {fmt(off1['p99_ms'])} ms)"
        rows.append([f"HTTP /v1/{endpoint} p99 at concurrency 1 < {max_over:g}x the {what} model time", measured,
                     _status(ok)])
    # 4. bulk
    for P in (bulk or {}).get("processes", [1, 2]):
        c = (bulk or {}).get("results", {}).get("celery", {}).get(str(P))
        o = (bulk or {}).get("results", {}).get("offline", {}).get(str(P))
        ok = None if not c or not o else o["wall_s"] / c["wall_s"] >= TARGETS["bulk"]["min_share_of_offline"]
        n = (bulk or {}).get("faces", 0) * (bulk or {}).get("variants", 0)
        rows.append([f"bulk with {P} process(es): API + Celery >= {TARGETS['bulk']['min_share_of_offline']:.0%} of "
                     "offline `lrface augment`",
                     f"{fmt(n / c['wall_s'])} vs {fmt(n / o['wall_s'])} images/s = {o['wall_s'] / c['wall_s']:.0%}"
                     if ok is not None else "not measured", _status(ok)])
    # 5. cost curve
    if cost:
        lin = cost["linearity"]
        rows.append(["`lrface augment` time linear in the number of faces",
                     f"t = {lin['startup_s']:.1f} s + {1000 * lin['s_per_face']:.1f} ms/face, worst miss "
                     f"{lin['max_rel_residual']:.0%}, last step {lin['last_step_over_slope']:+.0%} vs fit (limit {TARGETS['cost_curve']['tolerance']:.0%})",
                     _status(lin["linear"])])
        mems = [r["peak_rss_mib"] for r in cost["runs"]]
        rows.append([f"`lrface augment` peak memory flat within {TARGETS['cost_curve']['tolerance']:.0%}",
                     f"{min(mems):.0f}–{max(mems):.0f} MiB (spread {cost['memory_spread']:.0%})", _status(cost["flat_memory"])])
    else:
        rows += [["`lrface augment` time linear in the number of faces", "not measured", "–"],
                 [f"`lrface augment` peak memory flat within {TARGETS['cost_curve']['tolerance']:.0%}", "not measured", "–"]]
    return rows


def _model_line(path: str | None) -> str:
    if not path:
        return "–"
    sidecar = Path(path).with_suffix(".json")
    try:
        model_id = json.loads(sidecar.read_text()).get("model_id", "?")
    except (OSError, ValueError):
        model_id = "?"
    return f"`{path}` ({model_id})"


def write_report(results: Path, out: Path, args, ran: list[str], failed: dict[str, str], started: dict,
                 wall_s: float) -> None:
    data = {json_name: load(results, json_name) for _, json_name in BENCHMARKS.values()}
    # A JSON left by a run on other models is not this run's: reported as such, kept out of the targets.
    wanted = {"mrgan": str(Path(args.mrgan).resolve()), "embedder": str(Path(args.embedder).resolve())}
    stale = {}
    for name, (_, json_name) in BENCHMARKS.items():
        d = data.get(json_name)
        if d is not None and name not in ran and d.get("model_files") != wanted:
            stale[name] = d.get("model_files")
            data[json_name] = None
    end = machine()
    lines = [
        "# lrface benchmark results" + (" (quick smoke run)" if args.quick else ""),
        "",
        f"- machine: {started['cpu']}, {started['cores']} cores ({started['usable_cores']} usable), "
        f"{started['memory_gib']} GiB memory",
        f"- date: {started['date']} (run took {wall_s / 60:.1f} min)",
        f"- load average (1/5/15 min) at start {started['load_avg_at_start']}, at end {end['load_avg_at_start']}"
        + (" — other work was running: absolute numbers are pessimistic" if started["load_avg_at_start"][0] > 0.5 * started["cores"] else ""),
        f"- software: Python {started['python']}, onnxruntime {started['onnxruntime']}, numpy {started['numpy']}",
        f"- MR-GAN: {_model_line(str(args.mrgan))}; embedder: {_model_line(str(args.embedder))}",
        f"- threads per process: {args.threads}",
        f"- command: `python -m bench.run {' '.join(args.argv)}`",
        "",
        "## Targets",
        "",
        md_table(["target", "measured", "status"], targets(data)),
        "",
    ]
    for name, (_, json_name) in BENCHMARKS.items():
        d = data.get(json_name)
        lines.append(f"## {d['title'] if d else name}")
        lines.append("")
        if name in failed:
            lines += [f"**This run failed**: {failed[name]}", ""]
        if d is None:
            lines += [f"not measured (the last results were for other models: {stale[name]})" if name in stale
                      else "not measured", ""]
            continue
        if name not in ran:
            lines += [f"_from an earlier run ({d['machine']['date']}, load average {d['machine']['load_avg_at_start']})_", ""]
        lines += [d["table_md"], ""] + [f"- {n}" for n in d.get("notes", [])] + [""]
    lines.append(f"Raw numbers: `{results.relative_to(REPO) if results.is_relative_to(REPO) else results}/*.json`.")
    out.write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> int:
    exit_on_sigterm()
    argv = list(sys.argv[1:] if argv is None else argv)
    p = argparse.ArgumentParser(prog="lrface bench", description=__doc__.split("\n\n")[0])
    p.add_argument("benchmarks", nargs="*", metavar="NAME",
                   help=f"which to run: {', '.join(BENCHMARKS)} (default: all)")
    p.add_argument("--quick", action="store_true", help="smoke runs (< 1 min each) into bench/results/quick/")
    p.add_argument("--mrgan", type=Path, default=default_model_path("mrgan"))
    p.add_argument("--embedder", type=Path, default=default_model_path("embedder"))
    p.add_argument("--mrgan-ckpt", type=Path, help="MR-GAN checkpoint for the eager-torch comparison (default: rebuilt from the ONNX file)")
    p.add_argument("--embedder-ckpt", type=Path, help="embedder / ran checkpoint for the eager-torch comparison (default: rebuilt from the ONNX file)")
    p.add_argument("--threads", type=int, default=cpu_count())
    p.add_argument("--report-only", action="store_true", help="only rebuild RESULTS.md from the JSON files")
    args = p.parse_args(argv)
    args.argv = argv
    unknown = [b for b in args.benchmarks if b not in BENCHMARKS]
    if unknown:
        p.error(f"unknown benchmark(s) {', '.join(unknown)}; choose from {', '.join(BENCHMARKS)}")
    selected = [] if args.report_only else (args.benchmarks or list(BENCHMARKS))
    results = QUICK_RESULTS_DIR if args.quick else RESULTS_DIR
    results.mkdir(parents=True, exist_ok=True)
    out = results / "RESULTS.md" if args.quick else REPO / "bench" / "RESULTS.md"
    started = machine()
    t0 = time.perf_counter()
    common = ["--mrgan", str(args.mrgan), "--embedder", str(args.embedder), "--threads", str(args.threads)]
    if args.quick:
        common.append("--quick")
    ran, failed = [], {}
    for name in selected:
        module, _ = BENCHMARKS[name]
        cmd = [sys.executable, "-m", module] + common
        if name == "throughput":
            for flag, value in (("--mrgan-ckpt", args.mrgan_ckpt), ("--embedder-ckpt", args.embedder_ckpt)):
                if value is not None:
                    cmd += [flag, str(value)]
        print(f"\n== bench {name}: {' '.join(cmd[1:])}", flush=True)
        t = time.perf_counter()
        rc = subprocess.run(cmd, cwd=REPO, env=child_env()).returncode
        print(f"== bench {name}: exit {rc} after {time.perf_counter() - t:.0f} s", flush=True)
        if rc == 0:
            ran.append(name)
        else:
            failed[name] = f"`{' '.join(cmd[1:])}` exited with {rc}"
    write_report(results, out, args, ran, failed, started, time.perf_counter() - t0)
    print(f"\nwrote {out}")
    print(out.read_text().split("## Targets", 1)[1].split("\n## ", 1)[0])
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
