"""Bulk: N faces x K variants through the API + Celery + Redis with 1 and 2 worker processes, next to
`lrface augment` offline on the same input with the same number of processes.

- Input: N aligned 112x96 JPEG faces, jittered copies of the dev set (or the test fixtures), split into shards.
- Celery: the API (uvicorn, `create_app`) and `lrface worker --concurrency P` against the given Redis, under a
  private queue and key prefix; a small warm-up job first (worker connected, model loaded), then the timed job,
  from POST /v1/jobs until GET /v1/jobs/{id} says succeeded.
- Offline: P `lrface augment` processes at once, each on its share of the shards (the same relative paths,
  so the same output files), timed from the first start to the last exit, model loading included.
Every process gets cores / P intra-op threads. For each P the Celery run and the offline run follow each other
directly, so the two sides of a ratio are measured minutes apart at most.

    python -m bench.bulk --mrgan M.onnx [--faces 2000] [--variants 4] [--processes 1,2] [--quick]
"""
from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
import uuid
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import (base_parser, check_models, child_env, descendants, exit_on_sigterm, fmt, free_port,
                          link_subset, make_face_tree, md_table, peak_rss_of, report, save_result, spawn, stop,
                          tree_cpu_seconds, wait_http)


def count_outputs(out_dir: Path) -> tuple[int, int]:
    pngs = sum(1 for _ in out_dir.rglob("*.png"))
    manifests = list(out_dir.rglob("manifest.jsonl"))
    lines = sum(len(m.read_text().splitlines()) for m in manifests)
    return pngs, lines


# -- Celery --------------------------------------------------------------------------------------------------------

class CeleryStack:
    """The API and one `lrface worker` at a time, on a private queue and key prefix of the given Redis."""

    def __init__(self, args, workdir: Path, data_root: Path):
        self.args, self.workdir = args, workdir
        tag = uuid.uuid4().hex[:8]
        self.prefix, self.queue = f"lrface-bench-{tag}:", f"lrface-bench-{tag}"
        self.base_env = {
            "LRFACE_MRGAN_MODEL_PATH": args.mrgan.resolve(), "LRFACE_EMBEDDER_MODEL_PATH": args.embedder.resolve(),
            "LRFACE_PROVIDERS": "cpu", "LRFACE_LOG_LEVEL": "warning", "LRFACE_BROKER_URL": args.redis_url,
            "LRFACE_KEY_PREFIX": self.prefix, "LRFACE_QUEUE": self.queue, "LRFACE_DATA_ROOT": data_root,
            "LRFACE_JOBS_ROOT": workdir / "jobs", "LRFACE_STATE_DIR": workdir / "state",
            "LRFACE_CHUNK_SIZE": args.chunk_size,
        }
        self.api = self.worker = None
        self.base = None

    def env(self, threads: int) -> dict:
        return child_env({**self.base_env, "LRFACE_THREADS": threads}, threads=threads)

    def start_api(self) -> None:
        port = free_port()
        log = self.workdir / "api.log"
        # The API only plans jobs; it needs no embedder or detector, and one thread is plenty.
        self.api = spawn([sys.executable, "-m", "uvicorn", "--factory", "lrface.service.api.app:create_app", "--host",
                          "127.0.0.1", "--port", str(port), "--log-level", "warning", "--no-access-log"],
                         self.env(1), log)
        self.base = f"http://127.0.0.1:{port}"
        wait_http(f"{self.base}/healthz", self.api, timeout=180, log_path=log)

    def start_worker(self, processes: int, threads: int) -> None:
        log = self.workdir / f"worker-{processes}.log"
        self.worker = spawn([sys.executable, "-m", "lrface.service.cli", "worker", "--concurrency", str(processes),
                             "--loglevel", self.args.worker_loglevel], self.env(threads), log)

    def worker_peak_rss(self) -> dict:
        pids = [self.worker.pid] + descendants(self.worker.pid)
        peaks = [peak_rss_of(p) for p in pids]
        peaks = [p for p in peaks if p is not None]
        return {"max_mib": max(peaks, default=None), "sum_mib": sum(peaks) if peaks else None, "processes": len(peaks)}

    def run_job(self, input_dir: str, timeout: float) -> dict:
        import httpx

        cpu0 = tree_cpu_seconds(self.worker.pid), tree_cpu_seconds(self.api.pid)
        t0 = time.perf_counter()
        r = httpx.post(f"{self.base}/v1/jobs", json={"input_dir": input_dir, "variants": self.args.variants, "seed": 0},
                       timeout=120)
        if r.status_code != 202:
            raise RuntimeError(f"POST /v1/jobs answered {r.status_code}: {r.text[:500]}")
        job_id = r.json()["job_id"]
        while True:
            job = httpx.get(f"{self.base}/v1/jobs/{job_id}", timeout=30).json()
            if job["state"] in ("succeeded", "failed", "cancelled"):
                break
            if self.worker.poll() is not None:
                raise RuntimeError(f"the worker exited with {self.worker.returncode}; see {self.workdir}/worker-*.log")
            if time.perf_counter() - t0 > timeout:
                raise RuntimeError(f"job {job_id} not finished after {timeout:.0f} s: {job['state']} {job['counts']}")
            time.sleep(0.2)
        wall = time.perf_counter() - t0
        cpu = tree_cpu_seconds(self.worker.pid) - cpu0[0], tree_cpu_seconds(self.api.pid) - cpu0[1]
        if job["state"] != "succeeded":
            raise RuntimeError(f"job {job_id} {job['state']}: {job.get('error')}")
        return {"job_id": job_id, "wall_s": wall, "server_s": job["finished_at"] - job["created_at"],
                "counts": job["counts"], "chunks": job["chunks"], "output_dir": job["output_dir"],
                "worker_cpu_s": cpu[0], "api_cpu_s": cpu[1]}

    def stop_worker(self) -> None:
        stop(self.worker, timeout=30)
        self.worker = None

    def close(self) -> None:
        stop(self.worker, timeout=30)
        stop(self.api)
        try:
            import redis

            client = redis.Redis.from_url(self.args.redis_url)
            # job state under the private prefix; the queue and kombu's bindings of it (names contain the queue)
            keys = set(client.scan_iter(match=f"{self.prefix}*", count=1000))
            keys |= set(client.scan_iter(match=f"*{self.queue}*", count=1000))
            keys = sorted(keys)
            for i in range(0, len(keys), 500):
                client.delete(*keys[i:i + 500])
            # a task taken by a worker stopped mid-task stays in kombu's shared `unacked` hash: drop ours only
            marker = f'"{self.queue}"'.encode()
            for tag, message in client.hscan_iter("unacked"):
                if marker in message:
                    client.hdel("unacked", tag)
                    client.zrem("unacked_index", tag)
            client.close()
        except Exception as exc:  # cleanup must not hide the results
            print(f"bulk: could not remove the benchmark's Redis keys ({exc})", file=sys.stderr)


def redis_ok(url: str) -> str | None:
    try:
        import redis

        client = redis.Redis.from_url(url, socket_connect_timeout=2)
        client.ping()
        client.close()
        return None
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"


# -- offline -------------------------------------------------------------------------------------------------------

def run_offline(args, data_root: Path, shards: int, processes: int, threads: int, workdir: Path) -> dict:
    """P `lrface augment` processes at once; process i gets shards i, i+P, ... (hard-linked into its own folder)."""
    out_root = workdir / f"offline-{processes}"
    shutil.rmtree(out_root, ignore_errors=True)
    inputs = []
    for i in range(processes):
        if processes == 1:
            inputs.append(data_root / "faces")
            continue
        part = workdir / f"split-{processes}-{i}"
        if not part.exists():
            for s in range(i, shards, processes):
                src = data_root / "faces"
                rels = [p.relative_to(src).as_posix() for p in (src / f"shard_{s}").rglob("*.jpg")]
                link_subset(src, rels, part)
        inputs.append(part)
    env = child_env(threads=threads)
    procs = []
    t0 = time.perf_counter()
    for i, inp in enumerate(inputs):
        cmd = [sys.executable, "-m", "lrface.service.cli", "augment", str(inp), str(out_root / f"part-{i}"), "-k",
               str(args.variants), "--seed", "0", "--model", str(args.mrgan), "--threads", str(threads), "--device", "cpu"]
        procs.append(spawn(cmd, env, workdir / f"offline-{processes}-{i}.log"))
    peaks, cpu = [], 0.0
    for proc in procs:
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        peaks.append(usage.ru_maxrss / 1024)
        cpu += usage.ru_utime + usage.ru_stime
        if proc.returncode != 0:
            raise RuntimeError(f"lrface augment exited with {proc.returncode}; see {workdir}/offline-{processes}-*.log")
    wall = time.perf_counter() - t0
    pngs, lines = count_outputs(out_root)
    return {"wall_s": wall, "cpu_s": cpu, "peak_rss_mib_max": max(peaks), "peak_rss_mib_sum": sum(peaks), "pngs": pngs,
            "manifest_lines": lines}


# -- main ----------------------------------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    exit_on_sigterm()
    p = base_parser("python -m bench.bulk", __doc__.split("\n\n")[0])
    p.add_argument("--faces", type=int, default=None, help="input faces (default 2000; 32 with --quick)")
    p.add_argument("--variants", "-k", type=int, default=4)
    p.add_argument("--processes", default="1,2", help="worker / augment process counts (default 1,2)")
    p.add_argument("--redis-url", default="redis://127.0.0.1:6379/0", help="the Redis of the Celery runs")
    p.add_argument("--chunk-size", type=int, default=None,
                   help="LRFACE_CHUNK_SIZE of the job (default: the service default 64; 8 with --quick)")
    p.add_argument("--workdir", type=Path, default=None, help="scratch folder (default: a temp folder, removed after)")
    p.add_argument("--worker-loglevel", default="warning", help="log level of the Celery worker (its log is in --workdir)")
    p.add_argument("--skip-celery", action="store_true")
    p.add_argument("--skip-offline", action="store_true")
    args = p.parse_args(argv)
    check_models(args.mrgan)
    n = args.faces or (32 if args.quick else 2000)
    args.chunk_size = args.chunk_size or (8 if args.quick else 64)
    procs_list = [int(x) for x in args.processes.split(",")]
    shards = max(procs_list)
    cores = args.threads  # cores shared out: each of P processes gets cores // P threads
    timeout = 3600.0
    keep = args.workdir is not None
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="lrface-bench-bulk-"))
    workdir.mkdir(parents=True, exist_ok=True)
    data_root = workdir / "data"
    print(f"bulk: writing {n} input faces to {data_root / 'faces'} ...", file=sys.stderr, flush=True)
    make_face_tree(data_root / "faces", n, shards=shards)
    make_face_tree(data_root / "warmup", 4, shards=1, seed=1)
    results = {"celery": {}, "offline": {}}
    notes = []
    redis_problem = None if args.skip_celery else redis_ok(args.redis_url)
    try:
        stack = None
        if not args.skip_celery and redis_problem is None:
            stack = CeleryStack(args, workdir, data_root)
        elif redis_problem:
            notes.append(f"Celery runs skipped: Redis at {args.redis_url} is not reachable ({redis_problem})")
        try:
            if stack is not None:
                stack.start_api()
            # Each Celery run right next to its offline run: a slow spell of a shared machine then hits both.
            for P in procs_list:
                threads = max(1, cores // P)
                if stack is not None:
                    print(f"bulk: celery with {P} worker process(es), {threads} thread(s) each ...", file=sys.stderr, flush=True)
                    stack.start_worker(P, threads)
                    stack.run_job("warmup", timeout=300)
                    job = stack.run_job("faces", timeout)
                    job["worker_peak_rss"] = stack.worker_peak_rss()
                    job["pngs"], job["manifest_lines"] = count_outputs(Path(job["output_dir"]))
                    job["threads"] = threads
                    stack.stop_worker()
                    results["celery"][str(P)] = job
                if not args.skip_offline:
                    print(f"bulk: lrface augment with {P} process(es), {threads} thread(s) each ...", file=sys.stderr, flush=True)
                    r = run_offline(args, data_root, shards, P, threads, workdir)
                    r["threads"] = threads
                    results["offline"][str(P)] = r
        finally:
            if stack is not None:
                stack.close()
    finally:
        if not keep:
            shutil.rmtree(workdir, ignore_errors=True)
    total = n * args.variants
    headers = ["processes", "threads each", "path", "wall s", "faces/s", "images/s", "CPU ms / image", "outputs",
               "peak RSS MiB (max / sum)", "Celery / offline"]
    rows = []
    for P in procs_list:
        c, o = results["celery"].get(str(P)), results["offline"].get(str(P))
        if c:
            rows.append([P, c["threads"], "API + Celery + Redis", fmt(c["wall_s"]), fmt(n / c["wall_s"]),
                         fmt(total / c["wall_s"]), fmt(1000 * c["worker_cpu_s"] / total), f"{c['pngs']:,} (+{c['manifest_lines']:,} manifest lines)",
                         f"{fmt(c['worker_peak_rss']['max_mib'], 0)} / {fmt(c['worker_peak_rss']['sum_mib'], 0)}",
                         f"**{o['wall_s'] / c['wall_s']:.0%}**" if o else ""])
        if o:
            rows.append([P, o["threads"], "lrface augment", fmt(o["wall_s"]), fmt(n / o["wall_s"]),
                         fmt(total / o["wall_s"]), fmt(1000 * o["cpu_s"] / total), f"{o['pngs']:,} (+{o['manifest_lines']:,} manifest lines)",
                         f"{fmt(o['peak_rss_mib_max'], 0)} / {fmt(o['peak_rss_mib_sum'], 0)}", ""])
        for what, r in (("Celery", c), ("offline", o)):
            if r and r["pngs"] != total:
                notes.append(f"{what} with {P} process(es) wrote {r['pngs']} images, expected {total}")
    table = md_table(headers, rows)
    notes += [
        f"{n:,} faces x {args.variants} variants = {total:,} images (native LR PNGs); images/s = {total:,} / wall time",
        f"Celery: job chunks of {args.chunk_size} faces; wall = POST /v1/jobs until GET says succeeded (polled every "
        f"0.2 s), workers warmed up by a 4-face job first; peak RSS = the worker's processes (prefork parent + children)",
        "offline: process start-up and model loading inside the wall time; P processes each on 1/P of the shards",
        "both with the service defaults: onnxruntime's intra-op threads spin between parallel sections "
        "(LRFACE_WORKER_ORT_SPINNING=true in the workers, onnxruntime's own default in `lrface augment`)",
        "CPU ms / image: CPU time of the worker processes (Celery; the API's own is in the JSON) or of the augment "
        "processes, per image written: overhead shows here even when other load on the machine skews wall times",
    ]
    path = save_result(args, "bulk", {"title": "Bulk jobs", "table_md": table, "notes": notes, "faces": n,
                                      "variants": args.variants, "chunk_size": args.chunk_size, "results": results,
                                      "processes": procs_list, "cores": cores})
    report("Bulk jobs", table, notes, path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
