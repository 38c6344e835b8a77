"""HTTP: latency (p50 / p95 / p99) and throughput of POST /v1/embed and POST /v1/synthesize at concurrency 1, 8, 32,
with micro-batching on (the default: concurrent requests share model calls) and off (one model call per request).

The API runs in a child process on this machine (uvicorn with `lrface.service.api.app:create_app`, or `lrface serve`
with --server serve), configured through LRFACE_* variables to the given models, the CPU provider, --threads
intra-op threads and LRFACE_MICRO_BATCH=on / off (one server per setting). The load comes from `wrk` (C, one
thread, closed loop: C connections, each sending its next request when the previous answer is in) when it is
installed (`apt-get install wrk`), else from an async httpx client in this process (--client). Every request
carries one aligned 112x96 JPEG face (`/v1/embed` also once with --batch-images faces per request, as an extra
row); the request bodies are built once, before the clock starts. Client and server share the machine's cores.

    python -m bench.http_api --mrgan M.onnx --embedder E.onnx [--quick] [--client wrk|httpx] [--micro-batch on,off]
"""
from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import (base_parser, check_models, child_env, tree_cpu_seconds, exit_on_sigterm, fmt, free_port, jitter,
                          jpeg_bytes, md_table, peak_rss_of, percentile, report, run_json_child, save_result,
                          source_faces, spawn, stop, wait_http)

ENDPOINTS = ("embed", "synthesize")
PATHS = {"embed": "/v1/embed", "synthesize": "/v1/synthesize"}


def reference(args, embedder_only: bool = False) -> dict:
    """The models alone in this run (onnxruntime, same threads), for the targets: embed at batch 1 and 32, and
    synthesis at the batch one request makes (variants)."""
    out = {}
    todo = [("embedder", args.embedder, "1,32"), ("mrgan", args.mrgan, str(args.variants))]
    for model, path, batches in todo[:1] if embedder_only else todo:
        cmd = [sys.executable, "-m", "bench.throughput", "--child", "onnxruntime", "--model", model, "--path", str(path),
               "--threads", str(args.threads), "--batches", batches] + (["--quick"] if args.quick else [])
        r = run_json_child(cmd, child_env(threads=args.threads), timeout=900)
        out[model] = {b: {"ms_per_batch": v["ms_per_batch"], "items_per_s": v["items_per_s"]} for b, v in r["batches"].items()}
    return out


def start_server(args, workdir: Path, micro_batch: bool, processes: int = 1):
    port = free_port()
    threads = max(1, args.threads // processes)
    env = child_env({
        "LRFACE_MRGAN_MODEL_PATH": args.mrgan.resolve(), "LRFACE_EMBEDDER_MODEL_PATH": args.embedder.resolve(),
        "LRFACE_PROVIDERS": "cpu", "LRFACE_THREADS": threads, "LRFACE_LOG_LEVEL": "warning",
        "LRFACE_STATE_DIR": workdir / "state", "LRFACE_LOAD_MODELS_ON_STARTUP": "true",
        "LRFACE_MICRO_BATCH": "on" if micro_batch else "off",
    })
    env.pop("LRFACE_BROKER_URL", None)
    if args.server == "serve":
        cmd = [sys.executable, "-m", "lrface.service.cli", "serve", "--host", "127.0.0.1", "--port", str(port),
               "--workers-in-process", "0"]
    else:
        cmd = [sys.executable, "-m", "uvicorn", "--factory", "lrface.service.api.app:create_app", "--host", "127.0.0.1",
               "--port", str(port), "--log-level", "warning", "--no-access-log"]
        if processes > 1:
            cmd += ["--workers", str(processes)]
    log = workdir / f"server-{'mb' if micro_batch else 'plain'}.log"
    proc = spawn(cmd, env, log)
    wait_http(f"http://127.0.0.1:{port}/healthz", proc, timeout=180, log_path=log)
    return proc, f"http://127.0.0.1:{port}", log


def server_settings(base: str) -> dict:
    """What the running server reports about itself (micro-batching, from its metrics families)."""
    import httpx

    text = httpx.get(f"{base}/metrics", timeout=10).text
    return {"batch_calls": {m: _metric(text, "lrface_model_batch_rows_count", m) for m in ("embedder", "synthesizer")},
            "batch_rows": {m: _metric(text, "lrface_model_batch_rows_sum", m) for m in ("embedder", "synthesizer")}}


def _metric(text: str, name: str, model: str) -> float:
    for line in text.splitlines():
        if line.startswith(f'{name}{{model="{model}"}}'):
            return float(line.split()[-1])
    return 0.0


# -- request bodies ------------------------------------------------------------------------------------------------

def multipart(fields: dict[str, str], files: list[tuple[str, str, bytes]]) -> tuple[bytes, str]:
    """A multipart/form-data body (fields, then (field name, file name, JPEG bytes) parts) and its content type."""
    boundary = f"lrfacebench{uuid.uuid4().hex}"
    parts = []
    for name, value in fields.items():
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode())
    for name, filename, data in files:
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; filename="{filename}"\r\n'
                     f'Content-Type: image/jpeg\r\n\r\n'.encode() + data + b"\r\n")
    parts.append(f"--{boundary}--\r\n".encode())
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"


def request_bodies(endpoint: str, payloads: list[bytes], variants: int, images: int = 1) -> list[tuple[bytes, str]]:
    """One body per payload (cycled by the clients): `images` faces for /v1/embed, one face and `variants` PNG
    variants (seed = the body's index) for /v1/synthesize."""
    bodies = []
    for i in range(len(payloads)):
        if endpoint == "embed":
            files = [("images", f"face_{(i + j) % len(payloads)}.jpg", payloads[(i + j) % len(payloads)])
                     for j in range(images)]
            bodies.append(multipart({}, files))
        else:
            bodies.append(multipart({"variants": str(variants), "seed": str(i), "format": "png"},
                                    [("image", f"face_{i}.jpg", payloads[i])]))
    return bodies


# -- load generators -----------------------------------------------------------------------------------------------

async def _load_httpx(base: str, path: str, bodies: list[tuple[bytes, str]], concurrency: int, seconds: float,
                      warmup_s: float, on_measure_start=None, on_measure_end=None) -> dict:
    import httpx

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=base, limits=limits, timeout=httpx.Timeout(300.0)) as client:
        async def worker(w: int, until: float, lat: list, codes: list) -> None:
            i = w
            while time.perf_counter() < until:
                body, ctype = bodies[i % len(bodies)]
                t0 = time.perf_counter()
                r = await client.post(path, content=body, headers={"content-type": ctype})
                lat.append(time.perf_counter() - t0)
                codes.append(r.status_code)
                i += concurrency

        # warm-up: connections open, threadpool threads started, caches hot
        until = time.perf_counter() + warmup_s
        await asyncio.gather(*(worker(w, until, [], []) for w in range(concurrency)))
        if on_measure_start:
            on_measure_start()
        latencies: list[float] = []
        codes: list[int] = []
        t0 = time.perf_counter()
        await asyncio.gather(*(worker(w, t0 + seconds, latencies, codes) for w in range(concurrency)))
        elapsed = time.perf_counter() - t0
        if on_measure_end:
            on_measure_end()
    ok = [l for l, c in zip(latencies, codes) if c == 200]
    return {"requests": len(codes), "ok": len(ok), "elapsed_s": elapsed,
            "p50_ms": 1000 * percentile(ok, 50) if ok else None, "p95_ms": 1000 * percentile(ok, 95) if ok else None,
            "p99_ms": 1000 * percentile(ok, 99) if ok else None, "mean_ms": 1000 * sum(ok) / len(ok) if ok else None,
            "status_codes": sorted(set(codes))}


WRK_SCRIPT = r"""
local files = {FILES}
local ctypes = {CTYPES}
local reqs = {}
local idx = 0
function init(args)
  for i, p in ipairs(files) do
    local f = assert(io.open(p, "rb"))
    local body = f:read("*all")
    f:close()
    reqs[i] = wrk.format("POST", "PATH", {["Content-Type"] = ctypes[i]}, body)
  end
end
function request()
  idx = idx % #reqs + 1
  return reqs[idx]
end
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format('WRKJSON {"requests": %d, "duration_us": %d, "connect": %d, "read": %d, "write": %d, ' ..
    '"status": %d, "timeout": %d, "p50_us": %.1f, "p95_us": %.1f, "p99_us": %.1f, "mean_us": %.1f, "max_us": %.1f}\n',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(95), latency:percentile(99), latency.mean, latency.max))
end
"""


def _wrk_script(workdir: Path, path: str, bodies: list[tuple[bytes, str]]) -> Path:
    folder = workdir / f"wrk-{uuid.uuid4().hex[:8]}"
    folder.mkdir(parents=True)
    files = []
    for i, (body, _) in enumerate(bodies):
        (folder / f"body{i}.bin").write_bytes(body)
        files.append(str(folder / f"body{i}.bin"))
    lua = (WRK_SCRIPT.replace("{FILES}", "{" + ", ".join(json.dumps(f) for f in files) + "}")
           .replace("{CTYPES}", "{" + ", ".join(json.dumps(c) for _, c in bodies) + "}")
           .replace('"PATH"', json.dumps(path)))
    script = folder / "post.lua"
    script.write_text(lua)
    return script


def wait_idle(base: str, timeout: float = 120.0) -> None:
    """Until the server has no inference request in flight: wrk stops by closing its connections, and the server
    still finishes the requests they had sent (and counts them against its admission limit)."""
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = httpx.get(f"{base}/metrics", timeout=10).text
        busy = [l for l in text.splitlines() if l.startswith("lrface_inference_requests_in_flight ")]
        if not busy or float(busy[0].split()[-1]) == 0:
            return
        time.sleep(0.1)


def _run_wrk(url: str, script: Path, concurrency: int, seconds: float) -> dict:
    cmd = ["wrk", "-t1", f"-c{concurrency}", f"-d{max(1, round(seconds))}s", "--timeout", "120s", "-s", str(script), url]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 180)
    lines = [l for l in out.stdout.splitlines() if l.startswith("WRKJSON ")]
    if out.returncode != 0 or not lines:
        raise RuntimeError(f"wrk failed ({out.returncode}): {out.stdout[-1500:]}\n{out.stderr[-1500:]}")
    return json.loads(lines[-1][len("WRKJSON "):])


def _load_wrk(base: str, path: str, bodies: list[tuple[bytes, str]], concurrency: int, seconds: float,
              warmup_s: float, workdir: Path, on_measure_start=None, on_measure_end=None) -> dict:
    script = _wrk_script(workdir, path, bodies)
    if warmup_s > 0:
        _run_wrk(base + path, script, concurrency, warmup_s)
        wait_idle(base)
    if on_measure_start:
        on_measure_start()
    r = _run_wrk(base + path, script, concurrency, seconds)
    if on_measure_end:
        on_measure_end()
    wait_idle(base)
    errors = r["connect"] + r["read"] + r["write"] + r["status"] + r["timeout"]
    return {"requests": r["requests"], "ok": r["requests"] - r["status"], "elapsed_s": r["duration_us"] / 1e6,
            "p50_ms": r["p50_us"] / 1000, "p95_ms": r["p95_us"] / 1000, "p99_ms": r["p99_us"] / 1000,
            "mean_ms": r["mean_us"] / 1000, "wrk_errors": {k: r[k] for k in ("connect", "read", "write", "status", "timeout")},
            "errors_total": errors}


def measure(args, proc, base: str, endpoint: str, concurrency: int, bodies, images: int, micro_batch: bool,
            workdir: Path, seconds: float | None = None, warmup: float | None = None) -> dict:
    seconds = args.seconds if seconds is None else seconds
    warmup = args.warmup if warmup is None else warmup
    mark = {}

    def start():
        mark["cpu0"] = tree_cpu_seconds(proc.pid)

    def end():
        mark["cpu1"] = tree_cpu_seconds(proc.pid)

    path = PATHS[endpoint]
    if args.client == "wrk":
        r = _load_wrk(base, path, bodies, concurrency, seconds, warmup, workdir, start, end)
    else:
        r = asyncio.run(_load_httpx(base, path, bodies, concurrency, seconds, warmup, start, end))
    cpu0, cpu1 = mark.get("cpu0"), mark.get("cpu1")
    per_request = images if endpoint == "embed" else args.variants
    ok = r["ok"]
    errors = r.get("errors_total", r["requests"] - ok)
    return {"endpoint": endpoint, "micro_batch": micro_batch, "concurrency": concurrency, "images_per_request": images,
            "requests": r["requests"], "errors": errors, "elapsed_s": r["elapsed_s"],
            "requests_per_s": ok / r["elapsed_s"], "items_per_s": ok * per_request / r["elapsed_s"],
            "p50_ms": r["p50_ms"], "p95_ms": r["p95_ms"], "p99_ms": r["p99_ms"], "mean_ms": r["mean_ms"],
            "items_per_request": per_request, "client": args.client,
            "server_cpu_ms_per_request": (1000 * (cpu1 - cpu0) / max(1, r["requests"])
                                          if cpu0 is not None and cpu1 is not None else None),
            **{k: v for k, v in r.items() if k in ("status_codes", "wrk_errors")}}


def paired_target_rounds(args, proc, base: str, payloads, micro_batch: bool, workdir: Path, label: str) -> list[dict]:
    """The embed targets measured in pairs, so that a slow spell of a shared machine hits both sides: each round
    measures the model alone (batch 1 and 32, a child process, the server idle meanwhile), then /v1/embed at
    concurrency 1 and 32 with one face per request, each for --target-seconds."""
    bodies = request_bodies("embed", payloads, args.variants, 1)
    rounds = []
    for rnd in range(args.target_rounds):
        print(f"http: micro-batching {label}, paired target round {rnd + 1}/{args.target_rounds} ...",
              file=sys.stderr, flush=True)
        ref = reference(args, embedder_only=True)["embedder"]
        c1, c32 = (measure(args, proc, base, "embed", c, bodies, 1, micro_batch, workdir, args.target_seconds,
                           min(args.warmup, 1.0)) for c in (1, 32))
        rounds.append({"model_b1_ms": ref["1"]["ms_per_batch"], "model_b32_items_per_s": ref["32"]["items_per_s"],
                       "c1_p50_ms": c1["p50_ms"], "c1_p99_ms": c1["p99_ms"], "c1_requests": c1["requests"],
                       "c32_items_per_s": c32["items_per_s"], "c32_p99_ms": c32["p99_ms"],
                       "errors": c1["errors"] + c32["errors"]})
    return rounds


def main(argv: list[str] | None = None) -> int:
    exit_on_sigterm()
    p = base_parser("python -m bench.http_api", __doc__.split("\n\n")[0])
    p.add_argument("--concurrency", default="1,8,32")
    p.add_argument("--seconds", type=float, default=None, help="measured seconds per level (default 15; 2 with --quick)")
    p.add_argument("--warmup", type=float, default=None, help="warm-up seconds per level (default 3; 1 with --quick)")
    p.add_argument("--variants", type=int, default=1,
                   help="variants per /v1/synthesize request (default 1: one model row per request, comparable with batch 1)")
    p.add_argument("--endpoints", default=",".join(ENDPOINTS))
    p.add_argument("--target-rounds", type=int, default=None,
                   help="paired rounds for the embed targets with micro-batching on: the model alone, then "
                        "concurrency 1 and 32 (default 3; 1 with --quick; 0: judge on the table's rows)")
    p.add_argument("--target-seconds", type=float, default=None,
                   help="measured seconds per level in a paired round (default 6; 1 with --quick)")
    p.add_argument("--micro-batch", default="on,off,on-2p",
                   help="server settings to measure, in order (default on,off,on-2p): micro-batching on or off in one "
                        "API process with --threads threads, or on-Np: N API processes (uvicorn --workers) with "
                        "--threads / N threads each, measured on /v1/embed with one face per request")
    p.add_argument("--batch-images", type=int, default=32,
                   help="the extra /v1/embed row: this many faces per request (default 32; 0: no such row)")
    p.add_argument("--batch-concurrency", type=int, default=8, help="concurrency of that extra row (default 8)")
    p.add_argument("--client", choices=("auto", "wrk", "httpx"), default="auto",
                   help="load generator: wrk (C; needs the wrk binary), httpx (async Python, in this process), or "
                        "auto (wrk when installed)")
    p.add_argument("--no-reference", action="store_true",
                   help="skip measuring the models alone afterwards (the targets then use throughput.json)")
    p.add_argument("--server", choices=("uvicorn", "serve"), default="uvicorn",
                   help="uvicorn + create_app (default), or `lrface serve` (also starts an embedded Redis)")
    args = p.parse_args(argv)
    check_models(args.mrgan, args.embedder)
    if args.client == "auto":
        args.client = "wrk" if shutil.which("wrk") else "httpx"
    elif args.client == "wrk" and not shutil.which("wrk"):
        p.error("--client wrk: the wrk binary is not on PATH (apt-get install wrk)")
    args.seconds = args.seconds or (2.0 if args.quick else 15.0)
    args.warmup = args.warmup if args.warmup is not None else (1.0 if args.quick else 3.0)
    args.target_rounds = args.target_rounds if args.target_rounds is not None else (1 if args.quick else 3)
    args.target_seconds = args.target_seconds or (1.0 if args.quick else 6.0)
    levels = [int(c) for c in args.concurrency.split(",")]
    settings = []
    for word in [w.strip().lower() for w in args.micro_batch.split(",") if w.strip()]:
        if word in ("on", "off"):
            settings.append((word == "on", 1))
        elif word.startswith("on-") and word.endswith("p") and word[3:-1].isdigit() and int(word[3:-1]) >= 1:
            settings.append((True, int(word[3:-1])))
        else:
            p.error(f"--micro-batch takes on, off and on-Np (N API processes), not {word!r}")
    endpoints = [e for e in args.endpoints.split(",") if e]
    import numpy as np

    faces, face_source = source_faces(16)
    rng = np.random.default_rng(0)
    payloads = [jpeg_bytes(jitter(faces[i % len(faces)], rng)) for i in range(32)]
    results, servers, target_rounds = [], {}, {}
    with tempfile.TemporaryDirectory(prefix="lrface-bench-http-") as tmp:
        workdir = Path(tmp)
        for micro_batch, processes in settings:
            label = ("on" if micro_batch else "off") + (f"-{processes}p" if processes > 1 else "")
            proc, base, _ = start_server(args, workdir, micro_batch, processes)
            try:
                if processes > 1:
                    plan = [("embed", c, 1) for c in levels] if "embed" in endpoints else []
                else:
                    plan = [(e, c, 1) for e in endpoints for c in levels]
                    if args.batch_images > 1 and "embed" in endpoints:
                        plan.append(("embed", args.batch_concurrency, args.batch_images))
                for endpoint, c, images in plan:
                    print(f"http: micro-batching {label}, {endpoint} ({images} image(s)/request) at concurrency {c} "
                          f"({args.client}) ...", file=sys.stderr, flush=True)
                    bodies = request_bodies(endpoint, payloads, args.variants, images)
                    results.append({**measure(args, proc, base, endpoint, c, bodies, images, micro_batch, workdir),
                                    "api_processes": processes, "threads_per_process": max(1, args.threads // processes)})
                if micro_batch and "embed" in endpoints and args.target_rounds > 0 and not args.no_reference:
                    target_rounds[label] = paired_target_rounds(args, proc, base, payloads, micro_batch, workdir, label)
                servers[label] = {"peak_rss_mib": peak_rss_of(proc.pid), **server_settings(base)}
            finally:
                stop(proc)
    ref = {}
    if not args.no_reference:
        print("http: the models alone, for reference ...", file=sys.stderr, flush=True)
        ref = reference(args)
    headers = ["endpoint", "micro-batching", "API processes x threads", "concurrency", "images / request", "requests",
               "errors", "req/s", "items/s", "p50 ms", "p95 ms", "p99 ms", "server CPU ms / request"]
    rows = [[r["endpoint"], "on" if r["micro_batch"] else "off", f"{r['api_processes']} x {r['threads_per_process']}",
             r["concurrency"],
             r["images_per_request"] if r["endpoint"] == "embed" else "1",
             r["requests"], r["errors"], fmt(r["requests_per_s"]), fmt(r["items_per_s"]), fmt(r["p50_ms"]),
             fmt(r["p95_ms"]), fmt(r["p99_ms"]), fmt(r["server_cpu_ms_per_request"], 2)] for r in results]
    table = md_table(headers, rows)
    batched = {k: v for k, v in servers.items() if k == "on"}
    calls = batched.get("on", {})
    mean_rows = {m: (calls["batch_rows"][m] / calls["batch_calls"][m]) if calls.get("batch_calls", {}).get(m) else None
                 for m in ("embedder", "synthesizer")} if calls else {}
    client_desc = ("wrk (C, one thread, closed loop), pre-built multipart bodies" if args.client == "wrk"
                   else "async httpx in the benchmark process, pre-built multipart bodies")
    notes = [
        "micro-batching on (LRFACE_MICRO_BATCH=on, the default): one batcher per model gathers the rows of concurrent "
        "requests into one onnxruntime call (up to the model's max batch; LRFACE_BATCH_WAIT_MS=0: it takes what is "
        "queued when the previous call ends); off: each request runs its own call (batch = its images) on a "
        "thread-pool thread under the compute gate"
        + (f"; with it on, model calls averaged {fmt(mean_rows.get('embedder'))} rows (embedder) and "
           f"{fmt(mean_rows.get('synthesizer'))} rows (MR-GAN) over the whole run" if mean_rows else ""),
        f"server: {'uvicorn, lrface.service.api.app:create_app' if args.server == 'uvicorn' else 'lrface serve'}, "
        f"one process with {args.threads} intra-op threads per session, or (on-Np rows) N processes "
        f"(uvicorn --workers, `lrface serve --api-processes N`) with {args.threads} / N each; CPU provider; peak RSS of "
        f"the (parent) server process "
        + ", ".join(f"{fmt(v['peak_rss_mib'], 0)} MiB (micro-batching {k})" for k, v in servers.items()),
        f"client: {client_desc}; {args.seconds:g} s measured per level after {args.warmup:g} s warm-up; client and "
        f"server share the same {args.threads} cores; server CPU = the server process's CPU time over the measured "
        f"seconds / requests",
        f"each request: one aligned 112x96 JPEG face (jittered from {face_source}); /v1/synthesize with "
        f"variants={args.variants}, PNG output; items = faces (embed) or variants (synthesize)"
        + (f"; the extra embed row sends {args.batch_images} faces per request (the endpoint's batch form), the "
           f"target rows one" if args.batch_images > 1 and "embed" in endpoints else ""),
    ]
    for label, rounds in target_rounds.items():
        notes.append(
            f"paired target rounds, micro-batching {label} ({args.target_seconds:g} s per level; the model alone "
            f"measured just before each round): " + "; ".join(
                f"round {i + 1}: c=1 p99 {fmt(r['c1_p99_ms'])} ms vs model batch 1 {fmt(r['model_b1_ms'], 2)} ms "
                f"({r['c1_p99_ms'] / r['model_b1_ms']:.1f}x), c=32 {fmt(r['c32_items_per_s'])} vs batch 32 "
                f"{fmt(r['model_b32_items_per_s'])} faces/s ({r['c32_items_per_s'] / r['model_b32_items_per_s']:.0%})"
                for i, r in enumerate(rounds)))
    if ref:
        notes.append(
            f"the models alone in this run (onnxruntime, after the servers stopped): embed batch 1 "
            f"{fmt(ref['embedder']['1']['ms_per_batch'], 2)} ms, batch 32 {fmt(ref['embedder']['32']['items_per_s'])} "
            f"faces/s; synthesis batch {args.variants} {fmt(ref['mrgan'][str(args.variants)]['ms_per_batch'], 2)} ms")
    path = save_result(args, "http", {"title": "HTTP API", "table_md": table, "notes": notes, "results": results,
                                      "servers": servers, "variants": args.variants, "reference": ref,
                                      "target_rounds": target_rounds,
                                      "threads": args.threads, "server": args.server, "seconds": args.seconds,
                                      "client": args.client})
    report("HTTP API", table, notes, path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
