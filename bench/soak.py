"""Soak test of the HTTP API: /v1/embed and /v1/synthesize at a fixed concurrency for N minutes.

Records, per minute: requests, errors (by status code or exception), throughput, p50 / p99 latency per endpoint,
and the resident memory (RSS) of the server process, sampled every second. Prints a Markdown table and writes
the whole record as JSON. A healthy service shows flat RSS after warm-up, no errors (or only 503 `overloaded`
with Retry-After when the concurrency exceeds LRFACE_INFERENCE_CONCURRENCY + LRFACE_INFERENCE_QUEUE_SIZE), and
a flat p99.

    python bench/soak.py                         # 10 minutes, concurrency 32, starts `lrface serve` itself
    python bench/soak.py --minutes 2 --mrgan .scratch/h3/mrgan.onnx --embedder .scratch/h3/embedder.onnx
    python bench/soak.py --url http://127.0.0.1:8000 --pid 1234 --api-key KEY   # an already running server

A started server gets an embedded Redis and no bulk-job worker (`--workers-in-process 0`); its log goes next
to the JSON file.
"""
from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import math
import os
import platform
import random
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FACES = sorted((REPO / "tests" / "fixtures" / "hr").glob("*/*.jpg"))


def _parse(argv: list[str] | None) -> argparse.Namespace:
    weights = REPO / "models" / "weights"
    p = argparse.ArgumentParser(prog="bench/soak.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--minutes", type=float, default=10.0, help="duration (default 10)")
    p.add_argument("--concurrency", type=int, default=32, help="requests in flight at all times (default 32)")
    p.add_argument("--embed-images", type=int, default=4, help="images per /v1/embed request (default 4)")
    p.add_argument("--variants", type=int, default=4, help="variants per /v1/synthesize request (default 4)")
    p.add_argument("--synth-share", type=float, default=0.5, help="share of requests going to /v1/synthesize (0.5)")
    p.add_argument("--url", help="soak a running server instead of starting one (give --pid for its RSS)")
    p.add_argument("--pid", type=int, help="the running server's process id (for RSS)")
    p.add_argument("--api-key", default=os.environ.get("LRFACE_SOAK_API_KEY"), help="bearer key, when keys are on")
    p.add_argument("--mrgan", type=Path, default=weights / "mrgan.onnx", help="MR-GAN ONNX for a started server")
    p.add_argument("--embedder", type=Path, default=weights / "embedder.onnx", help="embedder ONNX for a started server")
    p.add_argument("--threads", type=int, default=None, help="LRFACE_THREADS of a started server (default: onnxruntime's)")
    p.add_argument("--timeout", type=float, default=120.0, help="client timeout per request, seconds (default 120)")
    p.add_argument("--json", type=Path, default=None,
                   help="where the JSON goes (default ./soak-<UTC time>.json)")
    args = p.parse_args(argv)
    if args.url and not args.pid:
        p.error("--url needs --pid (the server process whose RSS is recorded)")
    if args.concurrency < 1 or args.minutes <= 0:
        p.error("--concurrency must be >= 1 and --minutes > 0")
    return args


# -- the server ------------------------------------------------------------------------------------------------

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(args, workdir: Path) -> tuple[subprocess.Popen, str, Path]:
    for path in (args.mrgan, args.embedder):
        if not path.is_file() or not path.with_suffix(".json").is_file():
            sys.exit(f"soak: model {path} (+ .json) not found; pass --mrgan / --embedder")
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("LRFACE_")}
    env.update({"LRFACE_MRGAN_MODEL_PATH": str(args.mrgan), "LRFACE_EMBEDDER_MODEL_PATH": str(args.embedder),
                "LRFACE_STATE_DIR": str(workdir / "state"), "LRFACE_LOG_LEVEL": "warning", "PYTHONUNBUFFERED": "1"})
    if args.threads:
        env["LRFACE_THREADS"] = str(args.threads)
    log_path = workdir / "server.log"
    log = open(log_path, "wb")
    cmd = [sys.executable, "-m", "lrface.service.cli", "serve", "--host", "127.0.0.1", "--port", str(port),
           "--workers-in-process", "0"]
    proc = subprocess.Popen(cmd, env=env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    import httpx

    deadline = time.monotonic() + 120
    while True:
        if proc.poll() is not None:
            sys.exit(f"soak: the server exited with {proc.returncode}; see {log_path}")
        try:
            if httpx.get(url + "/readyz", timeout=2).status_code in (200, 503):
                break
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            proc.kill()
            sys.exit(f"soak: the server did not answer within 120 s; see {log_path}")
        time.sleep(0.3)
    return proc, url, log_path


def stop_server(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def rss_mib(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        return None
    return None


def tree_rss_mib(pid: int) -> float | None:
    """RSS of the process and all its descendants (a started server's embedded redis-server)."""
    children: dict[int, list[int]] = defaultdict(list)
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children[int(fields[1])].append(int(stat.parent.name))
    total, todo = 0.0, [pid]
    while todo:
        p = todo.pop()
        value = rss_mib(p)
        if value is None and p == pid:
            return None
        total += value or 0.0
        todo += children.get(p, [])
    return total


# -- the load --------------------------------------------------------------------------------------------------

def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    k = (len(ordered) - 1) * q / 100.0
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


async def soak(args, url: str, pid: int) -> dict:
    import httpx

    faces = [(p.name, p.read_bytes()) for p in FACES]
    if not faces:
        sys.exit("soak: no test faces under tests/fixtures/hr")
    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    duration = args.minutes * 60.0
    start = time.monotonic()
    deadline = start + duration
    events: list[tuple[float, str, str, float]] = []  # (seconds since start, endpoint, outcome, latency s)
    rss: list[tuple[float, float | None, float | None]] = []
    limits = httpx.Limits(max_connections=args.concurrency, max_keepalive_connections=args.concurrency)

    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=args.timeout, limits=limits) as client:
        async def one_client(i: int) -> None:
            n = 0
            while time.monotonic() < deadline:
                n += 1
                # a fixed pseudo-random mix per (client, request): (i * 7919 + n) % 1000 walked through 500
                # synthesize requests in a row, then 500 embeds, so all clients drifted into long one-endpoint phases
                synth = random.Random(i * 1_000_003 + n).random() < args.synth_share
                t0 = time.monotonic()
                try:
                    if synth:
                        name, data = faces[(i + n) % len(faces)]
                        r = await client.post("/v1/synthesize", files={"image": (name, data, "image/jpeg")},
                                              data={"variants": str(args.variants), "seed": str(n)})
                    else:
                        files = [("images", (faces[(i + n + k) % len(faces)][0], faces[(i + n + k) % len(faces)][1],
                                             "image/jpeg")) for k in range(args.embed_images)]
                        r = await client.post("/v1/embed", files=files)
                    outcome = str(r.status_code)
                    if r.status_code == 503 and r.headers.get("retry-after"):
                        await asyncio.sleep(min(float(r.headers["retry-after"]), 5.0))  # a polite client backs off
                except httpx.HTTPError as exc:
                    outcome = type(exc).__name__
                t1 = time.monotonic()
                events.append((t1 - start, "synthesize" if synth else "embed", outcome, t1 - t0))

        async def sampler() -> None:
            while time.monotonic() < deadline:
                rss.append((time.monotonic() - start, rss_mib(pid), tree_rss_mib(pid)))
                await asyncio.sleep(1.0)
            rss.append((time.monotonic() - start, rss_mib(pid), tree_rss_mib(pid)))

        async def progress() -> None:
            minute = 1
            while time.monotonic() < deadline:
                await asyncio.sleep(max(0.0, min(start + 60 * minute, deadline) - time.monotonic()))
                done = [e for e in events if e[0] <= 60 * minute]
                errors = sum(e[2] != "200" for e in done)
                mem = rss[-1][1] if rss else None
                print(f"soak: minute {minute}: {len(done)} requests so far, {errors} errors, server RSS "
                      f"{mem:.0f} MiB" if mem is not None else f"soak: minute {minute}: {len(done)} requests so far",
                      file=sys.stderr, flush=True)
                minute += 1

        await asyncio.gather(sampler(), progress(), *(one_client(i) for i in range(args.concurrency)))
    return summarize(args, events, rss, time.monotonic() - start)


def summarize(args, events, rss, elapsed: float) -> dict:
    minutes = max(1, math.ceil(args.minutes - 1e-9))

    def bucket(t: float) -> int:  # (requests finishing after the deadline count in the last minute)
        return min(int(t // 60.0), minutes - 1)

    rows = []
    for m in range(minutes):
        lo, hi = 60.0 * m, min(60.0 * (m + 1), elapsed)
        ev = [e for e in events if bucket(e[0]) == m]
        mem = [r for r in rss if bucket(r[0]) == m]
        row = {"minute": m + 1, "requests": len(ev), "ok": sum(e[2] == "200" for e in ev),
               "errors": dict(Counter(e[2] for e in ev if e[2] != "200")),
               "rps": round(len(ev) / max(1e-9, hi - lo), 2)}
        for endpoint in ("embed", "synthesize"):
            lat = [e[3] for e in ev if e[1] == endpoint and e[2] == "200"]
            row[f"{endpoint}_p50_ms"] = _ms(percentile(lat, 50))
            row[f"{endpoint}_p99_ms"] = _ms(percentile(lat, 99))
        row["p99_ms"] = _ms(percentile([e[3] for e in ev if e[2] == "200"], 99))
        server = [r[1] for r in mem if r[1] is not None]
        tree = [r[2] for r in mem if r[2] is not None]
        row["rss_mib_end"] = round(server[-1], 1) if server else None
        row["rss_mib_max"] = round(max(server), 1) if server else None
        row["tree_rss_mib_max"] = round(max(tree), 1) if tree else None
        rows.append(row)
    server_rss = [r[1] for r in rss if r[1] is not None]
    total_errors = Counter(e[2] for e in events if e[2] != "200")
    first = rows[0]["rss_mib_end"] if rows else None
    last = rows[-1]["rss_mib_end"] if rows else None
    return {
        "config": {"minutes": args.minutes, "concurrency": args.concurrency, "embed_images": args.embed_images,
                   "variants": args.variants, "synth_share": args.synth_share, "url_given": bool(args.url)},
        "machine": {"python": platform.python_version(), "platform": platform.platform(),
                    "cpus": os.cpu_count(), "load_avg_at_end": list(os.getloadavg())},
        "elapsed_s": round(elapsed, 1),
        "totals": {"requests": len(events), "ok": sum(e[2] == "200" for e in events), "errors": dict(total_errors),
                   "error_rate": round(sum(total_errors.values()) / max(1, len(events)), 5),
                   "p99_ms": _ms(percentile([e[3] for e in events if e[2] == "200"], 99)),
                   "rss_mib_min": round(min(server_rss), 1) if server_rss else None,
                   "rss_mib_max": round(max(server_rss), 1) if server_rss else None,
                   "rss_growth_mib_first_to_last_minute": round(last - first, 1) if first and last else None},
        "per_minute": rows,
        "rss_samples": [{"t_s": round(t, 1), "server_mib": _r(a), "tree_mib": _r(b)} for t, a, b in rss],
    }


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000.0, 1)


def _r(x: float | None) -> float | None:
    return None if x is None else round(x, 1)


def markdown(result: dict) -> str:
    head = ["minute", "requests", "req/s", "errors", "embed p50 / p99 ms", "synthesize p50 / p99 ms", "p99 ms",
            "RSS end / max MiB"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in result["per_minute"]:
        errors = ", ".join(f"{k}: {v}" for k, v in sorted(r["errors"].items())) or "0"
        lines.append("| " + " | ".join(str(x) for x in [
            r["minute"], r["requests"], r["rps"], errors, f"{r['embed_p50_ms']} / {r['embed_p99_ms']}",
            f"{r['synthesize_p50_ms']} / {r['synthesize_p99_ms']}", r["p99_ms"],
            f"{r['rss_mib_end']} / {r['rss_mib_max']}"]) + " |")
    t = result["totals"]
    lines.append("")
    lines.append(f"Total: {t['requests']} requests, {t['ok']} ok, errors {t['errors'] or 0} "
                 f"(rate {t['error_rate']:.3%}), p99 {t['p99_ms']} ms; server RSS {t['rss_mib_min']}..{t['rss_mib_max']} MiB, "
                 f"growth first -> last minute {t['rss_growth_mib_first_to_last_minute']} MiB.")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    out = args.json or Path.cwd() / f"soak-{dt.datetime.now(dt.timezone.utc):%Y%m%dT%H%M%SZ}.json"
    proc = None
    with tempfile.TemporaryDirectory(prefix="lrface-soak-") as tmp:
        if args.url:
            url, pid, log_path = args.url.rstrip("/"), args.pid, None
        else:
            proc, url, log_path = start_server(args, Path(tmp))
            pid = proc.pid
        print(f"soak: {args.minutes:g} min at concurrency {args.concurrency} against {url} (pid {pid})",
              file=sys.stderr, flush=True)
        try:
            result = asyncio.run(soak(args, url, pid))
        finally:
            if proc is not None:
                stop_server(proc)
                if log_path is not None and log_path.is_file():
                    kept = out.with_suffix(".server.log")
                    kept.parent.mkdir(parents=True, exist_ok=True)
                    kept.write_bytes(log_path.read_bytes())
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(markdown(result))
    print(f"\nJSON: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
