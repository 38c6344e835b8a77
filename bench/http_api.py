"""HTTP: latency (p50 / p95 / p99) and throughput of POST /v1/embed and POST /v1/synthesize at concurrency 1, 8, 32.

The API runs in a child process on this machine (uvicorn with `service.api.app:create_app`, or `lrface serve`
with --server serve), configured through LRFACE_* variables to the given models, the CPU provider and
--threads intra-op threads. The client (this process) is an async httpx client with C connections, each
sending one request after the other for a fixed time; every request carries one aligned 112x96 JPEG face.
Client and server share the machine's cores.

    python -m bench.http_api --mrgan M.onnx --embedder E.onnx [--quick]
"""
from __future__ import annotations

import asyncio
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import (REPO, base_parser, check_models, child_env, exit_on_sigterm, fmt, free_port, jitter,
                          jpeg_bytes, md_table, peak_rss_of, percentile, report, run_json_child, save_result,
                          source_faces, spawn, stop, wait_http)

ENDPOINTS = ("embed", "synthesize")


def micro_batching_note() -> str:
    """Whether the inference core batches concurrent requests (read from its source, so the note stays true)."""
    text = (REPO / "service" / "inference.py").read_text() + (REPO / "service" / "api" / "routes" / "embed.py").read_text()
    if any(word in text.lower() for word in ("microbatch", "micro_batch", "micro-batch", "batcher")):
        return "the inference core has a micro-batching path (detected in service/inference.py or the embed route)"
    return ("no micro-batching: each request runs its own onnxruntime call (batch = that request's images) on a "
            "Starlette threadpool thread, so concurrent requests become concurrent small calls competing for the "
            "same cores, not bigger batches")


def reference(args) -> dict:
    """The models alone in this run (onnxruntime, same threads), for the targets: embed at batch 1 and 32, and
    synthesis at the batch one request makes (variants)."""
    out = {}
    for model, path, batches in (("embedder", args.embedder, "1,32"), ("mrgan", args.mrgan, str(args.variants))):
        cmd = [sys.executable, "-m", "bench.throughput", "--child", "onnxruntime", "--model", model, "--path", str(path),
               "--threads", str(args.threads), "--batches", batches] + (["--quick"] if args.quick else [])
        r = run_json_child(cmd, child_env(threads=args.threads), timeout=900)
        out[model] = {b: {"ms_per_batch": v["ms_per_batch"], "items_per_s": v["items_per_s"]} for b, v in r["batches"].items()}
    return out


def start_server(args, workdir: Path):
    port = free_port()
    env = child_env({
        "LRFACE_MRGAN_MODEL_PATH": args.mrgan.resolve(), "LRFACE_EMBEDDER_MODEL_PATH": args.embedder.resolve(),
        "LRFACE_PROVIDERS": "cpu", "LRFACE_THREADS": args.threads, "LRFACE_LOG_LEVEL": "warning",
        "LRFACE_STATE_DIR": workdir / "state", "LRFACE_LOAD_MODELS_ON_STARTUP": "true",
    })
    env.pop("LRFACE_BROKER_URL", None)
    if args.server == "serve":
        cmd = [sys.executable, "-m", "service.cli", "serve", "--host", "127.0.0.1", "--port", str(port),
               "--workers-in-process", "0"]
    else:
        cmd = [sys.executable, "-m", "uvicorn", "--factory", "service.api.app:create_app", "--host", "127.0.0.1",
               "--port", str(port), "--log-level", "warning", "--no-access-log"]
    log = workdir / "server.log"
    proc = spawn(cmd, env, log)
    wait_http(f"http://127.0.0.1:{port}/healthz", proc, timeout=180, log_path=log)
    return proc, f"http://127.0.0.1:{port}", log


async def _load(base: str, endpoint: str, concurrency: int, seconds: float, warmup_s: float, payloads: list[bytes],
                variants: int) -> dict:
    import httpx

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    timeout = httpx.Timeout(300.0)
    async with httpx.AsyncClient(base_url=base, limits=limits, timeout=timeout) as client:
        async def one(i: int) -> tuple[float, int]:
            data = payloads[i % len(payloads)]
            t0 = time.perf_counter()
            if endpoint == "embed":
                r = await client.post("/v1/embed", files={"images": (f"face_{i % len(payloads)}.jpg", data, "image/jpeg")})
            else:
                r = await client.post("/v1/synthesize", files={"image": (f"face_{i % len(payloads)}.jpg", data, "image/jpeg")},
                                      data={"variants": str(variants), "seed": str(i), "format": "png"})
            return time.perf_counter() - t0, r.status_code

        async def worker(w: int, until: float, lat: list, codes: list) -> None:
            i = w
            while time.perf_counter() < until:
                dt, code = await one(i)
                lat.append(dt)
                codes.append(code)
                i += concurrency

        # warm-up: connections open, threadpool threads started, caches hot
        until = time.perf_counter() + warmup_s
        await asyncio.gather(*(worker(w, until, [], []) for w in range(concurrency)))
        latencies: list[float] = []
        codes: list[int] = []
        t0 = time.perf_counter()
        await asyncio.gather(*(worker(w, t0 + seconds, latencies, codes) for w in range(concurrency)))
        elapsed = time.perf_counter() - t0
    ok = [l for l, c in zip(latencies, codes) if c == 200]
    per_request = 1 if endpoint == "embed" else variants
    return {"endpoint": endpoint, "concurrency": concurrency, "requests": len(codes), "errors": len(codes) - len(ok),
            "elapsed_s": elapsed, "requests_per_s": len(ok) / elapsed, "items_per_s": len(ok) * per_request / elapsed,
            "p50_ms": 1000 * percentile(ok, 50) if ok else None, "p95_ms": 1000 * percentile(ok, 95) if ok else None,
            "p99_ms": 1000 * percentile(ok, 99) if ok else None, "mean_ms": 1000 * sum(ok) / len(ok) if ok else None,
            "items_per_request": per_request, "status_codes": sorted(set(codes))}


def main(argv: list[str] | None = None) -> int:
    exit_on_sigterm()
    p = base_parser("python -m bench.http_api", __doc__.split("\n\n")[0])
    p.add_argument("--concurrency", default="1,8,32")
    p.add_argument("--seconds", type=float, default=None, help="measured seconds per level (default 15; 2 with --quick)")
    p.add_argument("--warmup", type=float, default=None, help="warm-up seconds per level (default 3; 0.5 with --quick)")
    p.add_argument("--variants", type=int, default=1,
                   help="variants per /v1/synthesize request (default 1: one model row per request, comparable with batch 1)")
    p.add_argument("--endpoints", default=",".join(ENDPOINTS))
    p.add_argument("--server", choices=("uvicorn", "serve"), default="uvicorn",
                   help="uvicorn + create_app (default), or `lrface serve` (also starts an embedded Redis)")
    args = p.parse_args(argv)
    check_models(args.mrgan, args.embedder)
    seconds = args.seconds or (2.0 if args.quick else 15.0)
    warmup = args.warmup if args.warmup is not None else (0.5 if args.quick else 3.0)
    levels = [int(c) for c in args.concurrency.split(",")]
    import numpy as np

    faces, face_source = source_faces(16)
    rng = np.random.default_rng(0)
    payloads = [jpeg_bytes(jitter(faces[i % len(faces)], rng)) for i in range(32)]
    results = []
    with tempfile.TemporaryDirectory(prefix="lrface-bench-http-") as tmp:
        proc, base, log = start_server(args, Path(tmp))
        try:
            for endpoint in [e for e in args.endpoints.split(",") if e]:
                for c in levels:
                    print(f"http: {endpoint} at concurrency {c} ...", file=sys.stderr, flush=True)
                    results.append(asyncio.run(_load(base, endpoint, c, seconds, warmup, payloads, args.variants)))
            server_peak = peak_rss_of(proc.pid)
        finally:
            stop(proc)
    print("http: the models alone, for reference ...", file=sys.stderr, flush=True)
    ref = reference(args)
    headers = ["endpoint", "concurrency", "requests", "errors", "req/s", "items/s", "p50 ms", "p95 ms", "p99 ms"]
    rows = [[r["endpoint"], r["concurrency"], r["requests"], r["errors"], fmt(r["requests_per_s"]), fmt(r["items_per_s"]),
             fmt(r["p50_ms"]), fmt(r["p95_ms"]), fmt(r["p99_ms"])] for r in results]
    table = md_table(headers, rows)
    notes = [
        micro_batching_note(),
        f"server: {'uvicorn, service.api.app:create_app' if args.server == 'uvicorn' else 'lrface serve'}, one process, "
        f"CPU provider, {args.threads} intra-op threads per session; peak RSS {fmt(server_peak, 0)} MiB",
        f"each request: one aligned 112x96 JPEG face (jittered from {face_source}); /v1/synthesize with "
        f"variants={args.variants}, PNG output; items = faces (embed) or variants (synthesize)",
        f"{seconds:g} s measured per level after {warmup:g} s warm-up; client (async httpx) and server share the "
        f"same {args.threads} cores",
        f"the models alone in this run (onnxruntime, after the server stopped): embed batch 1 "
        f"{fmt(ref['embedder']['1']['ms_per_batch'], 2)} ms, batch 32 {fmt(ref['embedder']['32']['items_per_s'])} faces/s; "
        f"synthesis batch {args.variants} {fmt(ref['mrgan'][str(args.variants)]['ms_per_batch'], 2)} ms",
    ]
    path = save_result(args, "http", {"title": "HTTP API", "table_md": table, "notes": notes, "results": results,
                                      "server_peak_rss_mib": server_peak, "variants": args.variants, "reference": ref,
                                      "threads": args.threads, "server": args.server, "seconds": seconds})
    report("HTTP API", table, notes, path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
