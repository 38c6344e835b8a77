"""Shared pieces of the benchmarks: arguments, machine description, tables, JSON, timing, test faces, child processes.

Nothing here imports torch (the eager-torch side lives in bench/torch_models.py and runs in its own process).
"""
from __future__ import annotations

import argparse
import datetime as _dt
import io
import json
import os
import platform
import resource
import signal
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Iterable

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # `python bench/x.py` and `lrface bench` from a source checkout
    sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402

RESULTS_DIR = REPO / "bench" / "results"
QUICK_RESULTS_DIR = RESULTS_DIR / "quick"
FIXTURE_FACES = REPO / "tests" / "fixtures" / "hr"
DEV_FACES = REPO.parent / "shared" / "data" / "dev" / "hr"  # the shared data beside the checkout (../shared)
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


# -- arguments ---------------------------------------------------------------------------------------------------

def cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def default_model_path(name: str) -> Path:
    """lrface.core.onnx_model.default_model_path without importing onnxruntime (keeps the torch child's RSS clean)."""
    from lrface import models

    return Path(models.__file__).resolve().parent / "weights" / f"{name}.onnx"


def base_parser(prog: str, description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description=description)
    p.add_argument("--mrgan", type=Path, default=default_model_path("mrgan"),
                   help="MR-GAN ONNX (its .json sidecar next to it); default: the shipped lrface/models/weights/mrgan.onnx")
    p.add_argument("--embedder", type=Path, default=default_model_path("embedder"),
                   help="embedder ONNX (+ .json); default: the shipped lrface/models/weights/embedder.onnx")
    p.add_argument("--threads", type=int, default=cpu_count(),
                   help=f"intra-op threads per process, the same for every engine (default: all {cpu_count()} cores)")
    p.add_argument("--quick", action="store_true", help="short smoke run (< 1 min); results go to bench/results/quick/")
    p.add_argument("--results-dir", type=Path, default=None,
                   help="where the JSON goes (default bench/results, or bench/results/quick with --quick)")
    return p


def check_models(*paths: Path) -> None:
    for path in paths:
        if not Path(path).is_file() or not Path(path).with_suffix(".json").is_file():
            raise SystemExit(f"model not found: {path} (+ {Path(path).with_suffix('.json').name}); pass --mrgan / "
                             f"--embedder (e.g. the dev models in .scratch/tinyruns/onnx/)")


def results_dir(args) -> Path:
    d = args.results_dir or (QUICK_RESULTS_DIR if args.quick else RESULTS_DIR)
    d.mkdir(parents=True, exist_ok=True)
    return d


# -- machine and output ------------------------------------------------------------------------------------------

def lscpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        for line in out.splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return platform.processor() or "unknown"


def machine() -> dict:
    import onnxruntime

    info = {
        "cpu": lscpu_model(),
        "cores": os.cpu_count(),
        "usable_cores": cpu_count(),
        "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "onnxruntime": onnxruntime.__version__,
        "load_avg_at_start": [round(x, 2) for x in os.getloadavg()],
        "date": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
    }
    return info


def md_table(headers: list[str], rows: Iterable[Iterable]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    for row in rows:
        lines.append("| " + " | ".join("" if v is None else str(v) for v in row) + " |")
    return "\n".join(lines)


def fmt(x, digits: int = 1) -> str:
    if x is None:
        return "–"
    if isinstance(x, (int, np.integer)):
        return f"{int(x):,}"
    return f"{x:,.{digits}f}"


def save_result(args, name: str, payload: dict) -> Path:
    """Write `payload` (+ machine, argv, quick) to <results dir>/<name>.json; returns the path."""
    path = results_dir(args) / f"{name}.json"
    models = {"mrgan": str(Path(args.mrgan).resolve()), "embedder": str(Path(args.embedder).resolve())}
    payload = {"benchmark": name, "quick": bool(args.quick), "argv": sys.argv[1:], "machine": machine(),
               "model_files": models, **payload}
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    os.replace(tmp, path)
    return path


def report(title: str, table: str, notes: list[str], path: Path) -> None:
    print(f"\n### {title}\n\n{table}\n")
    for n in notes:
        print(f"- {n}")
    print(f"\n(JSON: {path})")


# -- timing and memory -------------------------------------------------------------------------------------------

def time_calls(fn: Callable[[], object], min_seconds: float, min_iters: int = 3, warmup: int = 1,
               max_iters: int = 100_000) -> dict:
    """Call fn() `warmup` times, then until both min_seconds and min_iters are reached; per-call times in s.

    The median is the headline (robust to the other load on a shared machine); mean and best are kept too.
    """
    for _ in range(warmup):
        fn()
    times = []
    start = time.perf_counter()
    while len(times) < max_iters and (len(times) < min_iters or time.perf_counter() - start < min_seconds):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return {"median_s": statistics.median(times), "mean_s": statistics.fmean(times), "best_s": min(times),
            "iters": len(times), "total_s": sum(times)}


def peak_rss_mib() -> float:
    """This process's peak resident set (ru_maxrss; KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def rss_mib(pid: int | str = "self") -> float | None:
    return _proc_status_kib(pid, "VmRSS")


def peak_rss_of(pid: int) -> float | None:
    """Peak resident set of a live process (VmHWM), MiB."""
    return _proc_status_kib(pid, "VmHWM")


def _proc_status_kib(pid, field: str) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def cpu_seconds(pid: int) -> float | None:
    """utime + stime of a live process so far (its own threads, not its children), seconds."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


def tree_cpu_seconds(pid: int) -> float:
    """CPU seconds of a live process and its live descendants."""
    return sum(c for c in (cpu_seconds(p) for p in [pid] + descendants(pid)) if c is not None)


def descendants(pid: int) -> list[int]:
    """Live descendant pids of `pid` (Linux /proc walk)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(entry.name))
    out, todo = [], [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            out.append(c)
            todo.append(c)
    return out


# -- test faces --------------------------------------------------------------------------------------------------

def source_faces(limit: int = 64) -> tuple[list[np.ndarray], str]:
    """A few aligned 112x96 HR faces: the dev set when present, else the test fixtures."""
    from lrface.core.face import read_image, to_canvas

    for root in (DEV_FACES, FIXTURE_FACES):
        if root.is_dir():
            files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)[:limit]
            if files:
                return [to_canvas(read_image(p)) for p in files], str(root)
    raise SystemExit(f"no face images found in {DEV_FACES} or {FIXTURE_FACES}")


def jitter(face: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A plausible new aligned face: small shift, brightness / contrast change, sometimes mirrored."""
    dy, dx = rng.integers(-3, 4, size=2)
    out = np.roll(face, (int(dy), int(dx)), axis=(0, 1)).astype(np.float32)
    out = (out - 128.0) * rng.uniform(0.85, 1.15) + 128.0 + rng.uniform(-15, 15)
    if rng.random() < 0.5:
        out = out[:, ::-1]
    return np.clip(out, 0, 255).astype(np.uint8)


def jpeg_bytes(face: np.ndarray, quality: int = 92) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(face).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def make_face_tree(root: Path, n: int, shards: int = 1, seed: int = 0, per_identity: int = 10) -> list[str]:
    """Write n jittered 112x96 JPEG faces as root/shard_<s>/id_<i>/face_<j>.jpg (shard = file index mod shards).

    Deterministic for (n, shards, seed). Returns the relative paths. Reuses a complete tree left by an earlier call.
    """
    root = Path(root)
    stamp = root / ".complete"
    key = f"{n} {shards} {seed} {per_identity}"
    rels = []
    for j in range(n):
        ident = j // per_identity
        rels.append(f"shard_{ident % shards}/id_{ident:05d}/face_{j:06d}.jpg")
    if stamp.is_file() and stamp.read_text() == key:
        return rels
    faces, _ = source_faces()
    rng = np.random.default_rng(seed)
    for j, rel in enumerate(rels):
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(jpeg_bytes(jitter(faces[j % len(faces)], rng)))
    stamp.write_text(key)
    return rels


def link_subset(src_root: Path, rels: list[str], dst_root: Path) -> None:
    """dst_root/<rel> as hard links (copies where links fail) of src_root/<rel>."""
    import shutil

    for rel in rels:
        dst = dst_root / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        if dst.exists():
            continue
        try:
            os.link(src_root / rel, dst)
        except OSError:
            shutil.copyfile(src_root / rel, dst)


# -- child processes ---------------------------------------------------------------------------------------------

def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def child_env(extra: dict | None = None, threads: int | None = None) -> dict:
    """The environment for a child: this one, the repo importable, BLAS / OpenMP pools pinned to `threads`."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    if threads is not None:
        for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
            env[var] = str(threads)
    env.update({k: str(v) for k, v in (extra or {}).items()})
    return env


def _child_setup() -> None:
    """preexec_fn: a process group of its own, and SIGTERM when the benchmark dies (Linux), so nothing is orphaned."""
    os.setpgrp()
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except Exception:
        pass


def exit_on_sigterm() -> None:
    """SIGTERM (a timeout, a kill) becomes SystemExit, so `finally` blocks stop the children and clean up."""
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))


def spawn(cmd: list[str], env: dict, log_path: Path | None = None) -> subprocess.Popen:
    """Start a child in its own process group (so stop() reaches its own children, and nothing else).

    A process group, not a new session: with the kernel's autogroup scheduling (sched_autogroup_enabled) every
    session is its own CPU group, so a new session would escape the benchmark's `nice` and would give, say, two
    `lrface augment` processes two groups' worth of CPU but a two-child Celery worker one: unfair to the
    comparison and to whatever else runs on the machine. Children stay in the caller's session.
    """
    out = open(log_path, "ab") if log_path is not None else subprocess.DEVNULL
    try:
        return subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, cwd=REPO, preexec_fn=_child_setup)
    finally:
        if log_path is not None:
            out.close()


def stop(proc: subprocess.Popen | None, timeout: float = 20.0) -> None:
    """SIGTERM the child's process group (the group this module created for it), then SIGKILL if it lingers."""
    if proc is None or proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()


def run_measured(cmd: list[str], env: dict, log_path: Path | None = None) -> dict:
    """Run a child to completion; wall time and its peak RSS (wait4's ru_maxrss, MiB). Raises on failure."""
    t0 = time.perf_counter()
    proc = spawn(cmd, env, log_path)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        tail = log_path.read_text(errors="replace")[-2000:] if log_path and log_path.is_file() else ""
        raise RuntimeError(f"{' '.join(map(str, cmd))} exited with {proc.returncode}\n{tail}")
    return {"wall_s": wall, "peak_rss_mib": usage.ru_maxrss / 1024, "cpu_s": usage.ru_utime + usage.ru_stime}


def run_json_child(cmd: list[str], env: dict, timeout: float | None = None) -> dict:
    """Run a child that prints one JSON object as its last stdout line; that object."""
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=REPO, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, cmd))} exited with {proc.returncode}:\n{proc.stderr[-3000:]}")
    lines = [l for l in proc.stdout.splitlines() if l.strip().startswith("{")]
    if not lines:
        raise RuntimeError(f"{' '.join(map(str, cmd))} printed no JSON:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    return json.loads(lines[-1])


def wait_http(url: str, proc: subprocess.Popen, timeout: float = 120.0, log_path: Path | None = None) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            tail = log_path.read_text(errors="replace")[-3000:] if log_path and log_path.is_file() else ""
            raise RuntimeError(f"the server exited with {proc.returncode} before answering\n{tail}")
        try:
            if httpx.get(url, timeout=2.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"{url} did not answer within {timeout:.0f} s")
        time.sleep(0.2)


def percentile(values: list[float], q: float) -> float | None:
    return float(np.percentile(values, q)) if values else None
