"""Helpers of the service tests: real server / worker subprocesses, a real Redis, generated inputs, output checks."""
from __future__ import annotations

import contextlib

import asyncio

import io
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import time
import uuid
import zlib
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
FIXTURES = Path(__file__).parent / "fixtures"
HR_FACES = sorted((FIXTURES / "hr").glob("*/*.jpg"))
RAW_PHOTOS = sorted((FIXTURES / "raw").glob("*.jpg"))
REDIS_HOST, REDIS_PORT = "127.0.0.1", 6379
TEST_REDIS_DB = 15  # the service tests' own database on the shared Redis; keys are prefixed per test as well
TEST_REDIS_URL = f"redis://{REDIS_HOST}:{REDIS_PORT}/{TEST_REDIS_DB}"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(predicate, timeout: float, interval: float = 0.05, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


async def until(predicate, timeout: float = 10.0, what: str = "the condition"):
    """`wait_for` inside an event loop: polls `predicate()` between turns of the loop until it is true."""
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        await asyncio.sleep(0.005)
    return value


def redis_or_skip(db: int = TEST_REDIS_DB):
    import redis

    client = redis.Redis(host=REDIS_HOST, port=REDIS_PORT, db=db, decode_responses=True, socket_connect_timeout=1)
    try:
        client.ping()
    except Exception as exc:
        pytest.skip(f"these tests need a Redis server on {REDIS_HOST}:{REDIS_PORT} ({exc}); "
                    "start one: redis-server --daemonize yes --port 6379 --save '' --appendonly no")
    return client


def unique_namespace() -> tuple[str, str]:
    """(key prefix, queue name) no other test run shares."""
    tag = uuid.uuid4().hex[:10]
    return f"lrface-test-{tag}:", f"lrface-test-{tag}"


def forget_namespace(client, prefix: str, queue: str) -> None:
    """Delete a test's job keys, its queue and the bindings kombu keeps for that queue."""
    keys = list(client.scan_iter(match=f"{prefix}*", count=500))
    keys += [queue, f"_kombu.binding.{queue}", f"_kombu.binding_permanent.{queue}"]
    client.delete(*keys)
    for member in client.zrange("_kombu.binding_deadlines", 0, -1):
        if queue in member:
            client.zrem("_kombu.binding_deadlines", member)


def service_env(tmp: Path, mrgan_path: Path, embedder_path: Path, **overrides) -> dict[str, str]:
    """Environment of a server / worker subprocess: the given models, one thread, everything under tmp."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LRFACE_")}
    env.update({
        "LRFACE_MRGAN_MODEL_PATH": str(mrgan_path),
        "LRFACE_EMBEDDER_MODEL_PATH": str(embedder_path),
        "LRFACE_THREADS": "1",
        "LRFACE_STATE_DIR": str(tmp / "state"),
        "LRFACE_DATA_ROOT": str(tmp / "data"),
        "LRFACE_JOBS_ROOT": str(tmp / "jobs"),
        "LRFACE_LOG_LEVEL": "warning",
        "PYTHONUNBUFFERED": "1",
        "OMP_NUM_THREADS": "1",
    })
    env.update({k: str(v) for k, v in overrides.items()})
    (tmp / "data").mkdir(parents=True, exist_ok=True)
    return env


class Process:
    """A child process whose output goes to a log file (printed when a test needs it)."""

    def __init__(self, cmd: list[str], env: dict[str, str], log_path: Path, new_session: bool = False):
        self.log_path = log_path
        self._log = open(log_path, "wb")
        # new_session: a process group of its own (with its children), so a test can SIGKILL the whole group.
        self.proc = subprocess.Popen(cmd, env=env, cwd=REPO, stdout=self._log, stderr=subprocess.STDOUT,
                                     start_new_session=new_session)

    def log_tail(self, n: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-n:]
        except OSError:
            return ""

    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill(self) -> None:
        if self.alive():
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def stop(self, timeout: float = 20.0) -> int:
        if self.alive():
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return self.proc.returncode


class Server(Process):
    """`lrface serve` (or any command serving HTTP on `port`), ready once /healthz answers."""

    def __init__(self, cmd: list[str], env: dict[str, str], port: int, log_path: Path, timeout: float = 90.0,
                 new_session: bool = False):
        super().__init__(cmd, env, log_path, new_session)
        self.base_url = f"http://127.0.0.1:{port}"

        def up():
            if not self.alive():
                raise AssertionError(f"the server exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                return httpx.get(self.base_url + "/healthz", timeout=1.0).status_code == 200
            except httpx.HTTPError:
                return False

        try:
            wait_for(up, timeout, 0.2, "the server to answer /healthz")
        except AssertionError:
            self.stop()
            raise

    def client(self, **kw) -> httpx.Client:
        return httpx.Client(base_url=self.base_url, timeout=60.0, **kw)


def serve(env: dict[str, str], tmp: Path, *args: str, new_session: bool = False) -> Server:
    port = free_port()
    cmd = [sys.executable, "-m", "lrface.service.cli", "serve", "--host", "127.0.0.1", "--port", str(port), *args]
    return Server(cmd, env, port, tmp / f"serve-{port}.log", new_session=new_session)


@contextlib.contextmanager
def served(tmp: Path, mrgan_path: Path, embedder_path: Path, *args: str, on_test_redis: bool = True, **overrides):
    """`lrface serve` with `overrides` (LRFACE_* settings) and CLI `args`: on the test Redis under a namespace of
    its own (removed afterwards; skipped without that Redis), or with `on_test_redis=False` on the embedded
    broker. Yields the Server, with `.tmp`, `.env`, `.redis` (a client of the test Redis, or None) and `.prefix`."""
    client = prefix = queue = None
    if on_test_redis:
        client = redis_or_skip()
        prefix, queue = unique_namespace()
        overrides.update(LRFACE_BROKER_URL=TEST_REDIS_URL, LRFACE_KEY_PREFIX=prefix, LRFACE_QUEUE=queue)
    env = service_env(tmp, mrgan_path, embedder_path, **overrides)
    srv = serve(env, tmp, *args)
    srv.tmp, srv.env, srv.redis, srv.prefix = tmp, env, client, prefix
    try:
        yield srv
    finally:
        srv.stop()
        if client is not None:
            forget_namespace(client, prefix, queue)


def served_on_test_redis(tmp: Path, mrgan_path: Path, embedder_path: Path, *args: str, **overrides):
    """`served` on the test Redis: for tests that need a server configured differently from their module's
    `server` fixture (conftest.py)."""
    return served(tmp, mrgan_path, embedder_path, *args, **overrides)


def start_worker(env: dict[str, str], log_path: Path) -> Process:
    """A real Celery worker (solo pool: the task runs in the process we may SIGKILL)."""
    cmd = [sys.executable, "-m", "celery", "-A", "lrface.service.celery_app", "worker", "--pool=solo", "--concurrency=1",
           "--loglevel=WARNING", "-Q", env["LRFACE_QUEUE"], "-n", f"{uuid.uuid4().hex[:8]}@%h",
           "--without-gossip", "--without-mingle", "--without-heartbeat"]
    return Process(cmd, env, log_path)


# -- inputs ----------------------------------------------------------------------------------------------------

def png_bytes(rgb: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb, "RGB").save(buf, format="PNG")
    return buf.getvalue()


def bomb_png(width: int = 30000, height: int = 30000) -> bytes:
    """A tiny PNG whose header claims width x height RGB pixels (a decompression bomb if anyone believed it)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 1024)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def make_faces(folder: Path, n: int, scale: int = 1) -> list[str]:
    """n distinct aligned faces (variations of the checked-in HR fixtures) as PNGs in two sub-folders.

    `scale` > 1 writes them larger (same content), which makes each one slower to read and resize.
    Returns their relative paths, sorted.
    """
    rels = []
    for i in range(n):
        rgb = np.asarray(Image.open(HR_FACES[i % len(HR_FACES)]).convert("RGB"))
        if (i // len(HR_FACES)) % 2:
            rgb = rgb[:, ::-1]
        rgb = np.clip(rgb.astype(np.int16) + (i // (2 * len(HR_FACES))) * 7, 0, 255).astype(np.uint8)
        if scale > 1:
            rgb = np.asarray(Image.fromarray(rgb).resize((rgb.shape[1] * scale, rgb.shape[0] * scale), Image.BICUBIC))
        rel = f"group{i % 2}/face_{i:02d}.png"
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.ascontiguousarray(rgb)).save(folder / rel)
        rels.append(rel)
    return sorted(rels)


# -- outputs ---------------------------------------------------------------------------------------------------

def expected_outputs(sources: list[str], variants: int) -> set[str]:
    from lrface.core.augment import output_path

    return {output_path(rel, k) for rel in sources for k in range(variants)}


def files_under(folder: Path) -> set[str]:
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}


def check_job_outputs(output_dir: Path, sources: list[str], variants: int, seed: int) -> list[dict]:
    """Exactly one file per (source, variant), a manifest that lists exactly those, nothing else on disk."""
    expected = expected_outputs(sources, variants)
    on_disk = files_under(output_dir)
    stray = on_disk - expected - {"manifest.jsonl"}
    assert not stray, f"unexpected files in the job output: {sorted(stray)[:10]}"
    missing = expected - on_disk
    assert not missing, f"missing outputs: {sorted(missing)[:10]}"
    rows = [json.loads(line) for line in (output_dir / "manifest.jsonl").read_text().splitlines()]
    outputs = [r["output"] for r in rows]
    assert len(outputs) == len(set(outputs)), "the manifest lists an output twice"
    assert set(outputs) == expected, "the manifest does not match the files on disk"
    assert {(r["source"], r["k"]) for r in rows} == {(s, k) for s in sources for k in range(variants)}
    assert all(r["seed"] == seed for r in rows)
    for r in rows:
        with Image.open(output_dir / r["output"]) as im:
            assert im.size == (r["width"], r["height"]), f"{r['output']} is {im.size}, the manifest says {r}"
    return rows


def child_pids(pid: int) -> list[int]:
    """Process ids whose parent is `pid` (read from /proc)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found
