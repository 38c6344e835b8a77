"""Bulk jobs: their state in Redis, safe input folders and archives, planning and fan-out into chunk tasks.

Redis keys (prefix `settings.key_prefix`, default "lrface:"):
    job:<id>            hash: state, kind (augment | embed), owner (API key fingerprint, "" without keys), params
                        (JSON), input_dir (a folder or a .rec), output_dir, input, total, done, failed, planned_failed,
                        chunks_total, chunk_size, created_at, started_at, updated_at (also a heartbeat of running
                        chunks), finished_at, error, recovered (chunk tasks queued again by the sweeper)
    job:<id>:errors     list of JSON `{"source", "reason", "message"}` (per-file failures)
    job:<id>:chunks     set of chunk indexes already counted (each chunk is counted once, whatever redelivers it)
    job:<id>:progress   hash "d<chunk>" / "f<chunk>": images done / failed so far in chunks not counted yet
                        (per-image progress; a chunk's fields go when the chunk is counted)
    job:<id>:sources    list of the planned relative paths (the finalizer rebuilds the manifest from it)
    job:<id>:cancel     present when the job was cancelled (or purged): chunk tasks check it and do nothing
    jobs                sorted set of job ids by creation time
    active              set of the ids of the jobs not finished yet (bounded by LRFACE_MAX_ACTIVE_JOBS)
    stats               hash of job counts by event (created, succeeded, failed, cancelled)
    images              hash of images processed by jobs, "<kind>:done" / "<kind>:failed"
    durations           hash of a histogram of job durations (submission to end) by final state:
                        "<state>:<bucket>" (cumulative counts), "<state>:count", "<state>:sum"
Nothing here holds pixels: tasks get (job id, chunk index, relative paths) and read the files themselves.
"""
from __future__ import annotations

import base64
import errno
import hashlib
import json
import logging
import os
import re
import shutil
import stat
import tarfile
import time
import uuid
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Callable

import redis

from service import recordio
from service.archive_limits import ArchiveLimitError, bounded_tarinfo, check_zip_directory, is_tar, shown
from service.settings import Settings

log = logging.getLogger("lrface.jobs")

STATES = ("queued", "running", "succeeded", "failed", "cancelled")
TERMINAL_STATES = ("succeeded", "failed", "cancelled")
KINDS = ("augment", "embed")
# Buckets (seconds) of the job duration histogram (lrface_job_duration_seconds).
DURATION_BUCKETS = (1, 5, 15, 60, 300, 900, 3600, 14400, 86400)
PURGED_TOMBSTONE_S = 24 * 3600  # a purged job's cancel flag stays this long, so chunk tasks still queued do nothing
MAX_ERRORS_SHOWN = 1000
# Below this many bytes a high compression ratio cannot hurt anyone (a small file of zeros is fine).
_RATIO_FLOOR = 1024 * 1024
_COPY_BLOCK = 1024 * 1024
_JOB_ID = re.compile(r"^[0-9a-f]{32}$")
_STRAY_TEMP = re.compile(r"^\..+\.\d+\.\d+\.tmp$")  # service.offline.write_atomic's temp names


class JobInputError(Exception):
    """The job request cannot be accepted; status / code / message go to the client as they are."""

    def __init__(self, status_code: int, error: str, message: str):
        super().__init__(message)
        self.status_code = status_code
        self.error = error
        self.message = message


@dataclass(frozen=True)
class JobParams:
    variants: int = 1
    seed: int = 0
    height: int | None = None
    min_height: int | None = None
    max_height: int | None = None
    canvas: bool = False
    kind: str = "augment"  # "embed": embeddings.npz of every face (the synthesis fields are unused)

    @classmethod
    def embedding(cls) -> "JobParams":
        return cls(kind="embed")

    @classmethod
    def from_dict(cls, p: dict) -> "JobParams":
        if p.get("kind") == "embed":
            return cls.embedding()
        return cls(int(p["variants"]), int(p["seed"]), p.get("height"), p.get("min_height"), p.get("max_height"),
                   bool(p.get("canvas")))

    def as_dict(self) -> dict:
        if self.kind == "embed":
            return {"kind": "embed"}
        return {
            "kind": self.kind,
            "variants": self.variants,
            "seed": self.seed,
            "height": self.height,
            "min_height": self.min_height,
            "max_height": self.max_height,
            "canvas": self.canvas,
        }

    def synthesis_args(self) -> tuple:
        """Positional (variants, seed, height, min_height, max_height) as `augment_sources` / `write_manifest` take them."""
        return self.variants, self.seed, self.height, self.min_height, self.max_height


def new_job_id() -> str:
    return uuid.uuid4().hex


def is_job_id(text: str) -> bool:
    return bool(_JOB_ID.match(text or ""))


# -- Redis state -----------------------------------------------------------------------------------------------

# Count a chunk once: SADD says whether this is the first time; only then do the counts move.
# The chunk's per-image progress fields go in the same step, so an image is never counted twice.
# A job purged meanwhile is not brought back (-1).
_RECORD_CHUNK = """
if redis.call('EXISTS', KEYS[1]) == 0 then return {-1, 0, 0} end
local added = redis.call('SADD', KEYS[2], ARGV[1])
if added == 1 then
  redis.call('HINCRBY', KEYS[1], 'done', tonumber(ARGV[2]))
  redis.call('HINCRBY', KEYS[1], 'failed', tonumber(ARGV[3]))
  for i = 6, #ARGV do redis.call('RPUSH', KEYS[3], ARGV[i]) end
  redis.call('HSET', KEYS[1], 'updated_at', ARGV[4])
  redis.call('HDEL', KEYS[4], 'd' .. ARGV[1], 'f' .. ARGV[1])
  redis.call('HINCRBY', KEYS[5], ARGV[5] .. ':done', tonumber(ARGV[2]))
  redis.call('HINCRBY', KEYS[5], ARGV[5] .. ':failed', tonumber(ARGV[3]))
end
return {added, redis.call('SCARD', KEYS[2]), tonumber(redis.call('HGET', KEYS[1], 'chunks_total') or '0')}
"""

# Per-image progress of a chunk not counted yet: images done / failed so far (only ever growing, so a
# redelivered chunk that starts over does not move the counts back). Nothing once the chunk is counted.
_PROGRESS = """
if redis.call('SISMEMBER', KEYS[2], ARGV[1]) == 1 or redis.call('EXISTS', KEYS[3]) == 0 then return 0 end
local fields = {'d' .. ARGV[1], 'f' .. ARGV[1]}
for i = 1, 2 do
  local old = tonumber(redis.call('HGET', KEYS[1], fields[i]) or '0')
  if tonumber(ARGV[i + 1]) > old then redis.call('HSET', KEYS[1], fields[i], ARGV[i + 1]) end
end
redis.call('HSET', KEYS[3], 'updated_at', ARGV[4])
return 1
"""

# Set fields that are written once (started_at, model_id) of a job that still exists.
_SET_ONCE = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
for i = 1, #ARGV, 2 do redis.call('HSETNX', KEYS[1], ARGV[i], ARGV[i + 1]) end
return 1
"""

# Move a job to a new state only from one of the allowed states; count the event once. A finished job leaves
# the set of active jobs (KEYS[3]; ARGV[3] is the job id) and its duration goes into the histogram (KEYS[4]).
_TRANSITION = """
local state = redis.call('HGET', KEYS[1], 'state')
if not state then return {0, ''} end
for i = 4, #ARGV do
  if state == ARGV[i] then
    redis.call('HSET', KEYS[1], 'state', ARGV[1], 'updated_at', ARGV[2])
    if ARGV[1] == 'succeeded' or ARGV[1] == 'failed' or ARGV[1] == 'cancelled' then
      redis.call('HSET', KEYS[1], 'finished_at', ARGV[2])
      redis.call('HINCRBY', KEYS[2], ARGV[1], 1)
      redis.call('SREM', KEYS[3], ARGV[3])
      local d = tonumber(ARGV[2]) - tonumber(redis.call('HGET', KEYS[1], 'created_at') or ARGV[2])
      if d < 0 then d = 0 end
      for _, b in ipairs({BUCKETS}) do
        if d <= b then redis.call('HINCRBY', KEYS[4], ARGV[1] .. ':' .. b, 1) end
      end
      redis.call('HINCRBY', KEYS[4], ARGV[1] .. ':count', 1)
      redis.call('HINCRBYFLOAT', KEYS[4], ARGV[1] .. ':sum', d)
    end
    return {1, ARGV[1]}
  end
end
return {0, state}
""".replace("{BUCKETS}", "{" + ", ".join(str(b) for b in DURATION_BUCKETS) + "}")

# Take a place among the active jobs when fewer than ARGV[2] are active.
_ADMIT = """
if redis.call('SCARD', KEYS[1]) >= tonumber(ARGV[2]) then return 0 end
redis.call('SADD', KEYS[1], ARGV[1])
return 1
"""


def redis_client(url: str, timeout: float | None = 5.0) -> redis.Redis:
    return redis.Redis.from_url(
        url, decode_responses=True, socket_connect_timeout=timeout, socket_timeout=timeout, health_check_interval=30
    )


class JobStore:
    """Job state in Redis hashes; shared by the API (create, read, cancel) and the workers (progress, finish)."""

    def __init__(self, client: redis.Redis, prefix: str = "lrface:"):
        self.redis = client
        self.prefix = prefix
        self._record_chunk = client.register_script(_RECORD_CHUNK)
        self._progress = client.register_script(_PROGRESS)
        self._set_once = client.register_script(_SET_ONCE)
        self._transition = client.register_script(_TRANSITION)
        self._admit = client.register_script(_ADMIT)

    @classmethod
    def from_settings(cls, settings: Settings) -> "JobStore":
        if not settings.job_state_url:
            raise RuntimeError("no Redis configured for job state (LRFACE_REDIS_URL / LRFACE_BROKER_URL)")
        return cls(redis_client(settings.job_state_url), settings.key_prefix)

    def key(self, job_id: str, part: str = "") -> str:
        return f"{self.prefix}job:{job_id}" + (f":{part}" if part else "")

    def create(self, job_id: str, *, params: JobParams, input_dir: Path, output_dir: Path, input_label: str,
               sources: list[str], failures: list[dict], chunks_total: int, chunk_size: int | None = None,
               owner: str = "") -> None:
        now = f"{time.time():.3f}"
        pipe = self.redis.pipeline(transaction=True)
        pipe.hset(self.key(job_id), mapping={
            "job_id": job_id,
            "state": "queued",
            "kind": params.kind,
            "owner": owner,
            "planned_failed": len(failures),
            "params": json.dumps(params.as_dict()),
            "input_dir": str(input_dir),
            "output_dir": str(output_dir),
            "input": input_label,
            "total": len(sources) + len(failures),
            "done": 0,
            "failed": len(failures),
            "chunks_total": chunks_total,
            "chunk_size": chunk_size if chunk_size is not None else max(1, len(sources)),
            "created_at": now,
            "updated_at": now,
        })
        if sources:
            for start in range(0, len(sources), 1000):
                pipe.rpush(self.key(job_id, "sources"), *sources[start:start + 1000])
        if failures:
            pipe.rpush(self.key(job_id, "errors"), *[json.dumps(_error_row(f)) for f in failures])
        pipe.zadd(f"{self.prefix}jobs", {job_id: float(now)})
        pipe.hincrby(f"{self.prefix}stats", "created", 1)
        pipe.execute()

    def get(self, job_id: str, errors_limit: int = MAX_ERRORS_SHOWN) -> dict | None:
        if not is_job_id(job_id):
            return None
        pipe = self.redis.pipeline(transaction=False)
        self._queue_get(pipe, job_id, errors_limit)
        return self._job_from(job_id, pipe.execute(), errors_limit)

    def get_many(self, job_ids: list[str], errors_limit: int = 0) -> list[dict | None]:
        pipe = self.redis.pipeline(transaction=False)
        for job_id in job_ids:
            self._queue_get(pipe, job_id, errors_limit)
        replies = pipe.execute()
        per_job = 4 + (errors_limit > 0)
        return [self._job_from(job_id, replies[i * per_job:(i + 1) * per_job], errors_limit)
                for i, job_id in enumerate(job_ids)]

    def _queue_get(self, pipe, job_id: str, errors_limit: int) -> None:
        pipe.hgetall(self.key(job_id))
        pipe.llen(self.key(job_id, "errors"))
        pipe.scard(self.key(job_id, "chunks"))
        pipe.hgetall(self.key(job_id, "progress"))
        if errors_limit > 0:  # (LRANGE 0 -1 would be all of them)
            pipe.lrange(self.key(job_id, "errors"), 0, errors_limit - 1)

    def _job_from(self, job_id: str, replies: list, errors_limit: int) -> dict | None:
        raw, n_errors, chunks_done, progress, *rest = replies
        errors = rest[0] if rest else []
        if not raw:
            return None
        # Images of chunks still running (or killed mid-way) on top of the counted chunks.
        running_done = sum(int(v) for k, v in progress.items() if k.startswith("d"))
        running_failed = sum(int(v) for k, v in progress.items() if k.startswith("f"))
        job = {
            "job_id": job_id,
            "state": raw.get("state", "queued"),
            "kind": raw.get("kind") or "augment",
            "owner": raw.get("owner", ""),
            "params": json.loads(raw.get("params") or "{}"),
            "input": raw.get("input", ""),
            "input_dir": raw.get("input_dir", ""),
            "output_dir": raw.get("output_dir", ""),
            "total": int(raw.get("total", 0)),
            "done": int(raw.get("done", 0)) + running_done,
            "failed": int(raw.get("failed", 0)) + running_failed,
            "chunks_total": int(raw.get("chunks_total", 0)),
            "chunks_done": int(chunks_done),
            "errors": [json.loads(e) for e in errors],
            "errors_total": int(n_errors),
            "error": raw.get("error") or None,
            "model_id": raw.get("model_id") or None,
            "created_at": float(raw.get("created_at", 0)),
            "started_at": float(raw["started_at"]) if raw.get("started_at") else None,
            "updated_at": float(raw.get("updated_at", 0)),
            "finished_at": float(raw["finished_at"]) if raw.get("finished_at") else None,
        }
        job["rate"], job["eta_s"] = _rate_and_eta(job, int(raw.get("planned_failed", 0)))
        return job

    def sources(self, job_id: str) -> list[str]:
        return self.redis.lrange(self.key(job_id, "sources"), 0, -1)

    def failures(self, job_id: str) -> list[dict]:
        return [json.loads(e) for e in self.redis.lrange(self.key(job_id, "errors"), 0, -1)]

    def exists(self, job_id: str) -> bool:
        return is_job_id(job_id) and bool(self.redis.exists(self.key(job_id)))

    def is_cancelled(self, job_id: str) -> bool:
        return bool(self.redis.exists(self.key(job_id, "cancel")))

    def transition(self, job_id: str, to_state: str, from_states: tuple[str, ...]) -> tuple[bool, str]:
        changed, state = self._transition(
            keys=[self.key(job_id), f"{self.prefix}stats", self.active_key, f"{self.prefix}durations"],
            args=[to_state, f"{time.time():.3f}", job_id, *from_states],
        )
        return bool(changed), state

    # -- bounded number of active jobs ------------------------------------------------------------------

    @property
    def active_key(self) -> str:
        return f"{self.prefix}active"

    def active_count(self) -> int:
        return int(self.redis.scard(self.active_key))

    def admit(self, job_id: str, limit: int) -> bool:
        """Count `job_id` among the active jobs if fewer than `limit` are; False when the limit is reached.

        Places held by jobs that finished (or whose state is gone) are given back first when the set is full.
        """
        if int(self._admit(keys=[self.active_key], args=[job_id, int(limit)])):
            return True
        if self.prune_active():
            return bool(int(self._admit(keys=[self.active_key], args=[job_id, int(limit)])))
        return False

    def release(self, job_id: str) -> None:
        self.redis.srem(self.active_key, job_id)

    def prune_active(self) -> int:
        """Drop ids of jobs that finished or whose state is gone from the active set; returns how many."""
        members = list(self.redis.smembers(self.active_key))
        if not members:
            return 0
        pipe = self.redis.pipeline(transaction=False)
        for job_id in members:
            pipe.hget(self.key(job_id), "state")
        stale = [j for j, state in zip(members, pipe.execute()) if state is None or state in TERMINAL_STATES]
        if stale:
            self.redis.srem(self.active_key, *stale)
        return len(stale)

    def touch(self, job_id: str) -> None:
        """Progress heartbeat of a running chunk (so a long chunk does not look stalled)."""
        if self.exists(job_id):  # (a job purged meanwhile is not brought back)
            self.redis.hset(self.key(job_id), "updated_at", f"{time.time():.3f}")

    def mark_running(self, job_id: str, model_id: str | None = None) -> None:
        self.transition(job_id, "running", ("queued",))
        fields = ["started_at", f"{time.time():.3f}"] + (["model_id", model_id] if model_id else [])
        self._set_once(keys=[self.key(job_id)], args=fields)

    def report_progress(self, job_id: str, chunk_index: int, done: int, failed: int) -> None:
        """Images of a chunk finished so far (also a heartbeat); ignored once the chunk is counted."""
        self._progress(keys=[self.key(job_id, "progress"), self.key(job_id, "chunks"), self.key(job_id)],
                       args=[int(chunk_index), int(done), int(failed), f"{time.time():.3f}"])

    def cancel(self, job_id: str) -> tuple[bool, str]:
        """Raise the cancel flag first (so no chunk starts work after this returns), then move the state."""
        self.redis.set(self.key(job_id, "cancel"), "1")
        return self.transition(job_id, "cancelled", ("queued", "running"))

    def fail(self, job_id: str, message: str) -> None:
        if self.exists(job_id):  # (a job purged meanwhile is not brought back)
            self.redis.hset(self.key(job_id), "error", message[:2000])
        self.transition(job_id, "failed", ("queued", "running"))

    def record_chunk(self, job_id: str, chunk_index: int, results: list[dict]) -> tuple[bool | None, int, int]:
        """Count a finished chunk's results once. Returns (first time? (None: the job is gone), chunks done,
        chunks total)."""
        failures = [r for r in results if r.get("status") == "failed"]
        done = len(results) - len(failures)
        kind = self.redis.hget(self.key(job_id), "kind") or "augment"
        added, chunks_done, chunks_total = self._record_chunk(
            keys=[self.key(job_id), self.key(job_id, "chunks"), self.key(job_id, "errors"),
                  self.key(job_id, "progress"), f"{self.prefix}images"],
            args=[int(chunk_index), done, len(failures), f"{time.time():.3f}", kind,
                  *[json.dumps(_error_row(f)) for f in failures]],
        )
        return (None if int(added) < 0 else bool(added)), int(chunks_done), int(chunks_total)

    def stats(self) -> dict[str, int]:
        raw = self.redis.hgetall(f"{self.prefix}stats")
        counts = {"created": 0, "succeeded": 0, "failed": 0, "cancelled": 0}
        counts.update({k: int(v) for k, v in raw.items()})
        return counts

    def image_stats(self) -> dict[tuple[str, str], int]:
        """{(kind, "done" | "failed"): images} processed by all jobs' counted chunks."""
        out = {}
        for field, value in self.redis.hgetall(f"{self.prefix}images").items():
            kind, _, status = field.partition(":")
            out[(kind, status)] = int(value)
        return out

    def duration_stats(self) -> dict[str, dict]:
        """{final state: {"buckets": {upper bound: cumulative count}, "count", "sum"}} of job durations."""
        out: dict[str, dict] = {}
        for field, value in self.redis.hgetall(f"{self.prefix}durations").items():
            state, _, what = field.partition(":")
            entry = out.setdefault(state, {"buckets": {float(b): 0 for b in DURATION_BUCKETS}, "count": 0, "sum": 0.0})
            if what == "count":
                entry["count"] = int(value)
            elif what == "sum":
                entry["sum"] = float(value)
            else:
                entry["buckets"][float(what)] = int(value)
        return out

    # -- listing and removing ---------------------------------------------------------------------------

    def list_jobs(self, limit: int, cursor: str | None = None, state: str | None = None,
                  owner: str | None = None, scan_limit: int = 10_000) -> tuple[list[dict], str | None]:
        """Jobs newest first after `cursor`, at most `limit`, of `state` and `owner` (None: any).

        Returns (jobs, next cursor or None when there are no more). At most `scan_limit` jobs are looked at per
        call, so a rare state gives a short page with a cursor rather than an unbounded scan; the cursor names
        the last job looked at (creation time and id), so pages never repeat or skip a job.
        """
        key = f"{self.prefix}jobs"
        top, after = (None, None) if not cursor else decode_cursor(cursor)
        found: list[str] = []
        last: tuple[float, str] | None = None
        seen = offset = 0
        batch = 200
        stopped_early = False
        while not stopped_early:
            entries = self.redis.zrevrangebyscore(key, "+inf" if top is None else repr(top), "-inf",
                                                  start=offset, num=batch, withscores=True)
            if not entries:
                break
            offset += len(entries)
            # Members with the cursor's own score come in reverse order: those up to the cursor were shown.
            entries = [(m, sc) for m, sc in entries if after is None or sc != top or m < after]
            pipe = self.redis.pipeline(transaction=False)
            for member, _ in entries:
                pipe.hmget(self.key(member), "state", "owner")
            for (member, score), (job_state, job_owner) in zip(entries, pipe.execute()):
                seen += 1
                last = (score, member)
                if job_state is not None and (state is None or job_state == state) and \
                        (owner is None or (job_owner or "") == owner):
                    found.append(member)
                if len(found) >= limit or seen >= scan_limit:
                    stopped_early = True
                    break
        jobs = [j for j in self.get_many(found) if j is not None]
        next_cursor = None
        if stopped_early and last is not None:
            ties = self.redis.zrangebyscore(key, repr(last[0]), repr(last[0]))
            if self.redis.zcount(key, "-inf", f"({last[0]!r}") > 0 or any(m < last[1] for m in ties):
                next_cursor = encode_cursor(*last)
        return jobs, next_cursor

    def delete(self, job_id: str) -> None:
        """Remove a job's state (leaving a cancel flag for a while, so its queued chunk tasks do nothing)."""
        pipe = self.redis.pipeline(transaction=True)
        pipe.delete(*[self.key(job_id, part) for part in ("", "errors", "chunks", "progress", "sources")])
        pipe.set(self.key(job_id, "cancel"), "purged", ex=PURGED_TOMBSTONE_S)
        pipe.zrem(f"{self.prefix}jobs", job_id)
        pipe.srem(self.active_key, job_id)
        pipe.execute()

    def finished_before(self, cutoff: float, limit: int = 1000) -> list[str]:
        """Ids of jobs that finished before `cutoff` (the oldest first, at most `limit`)."""
        candidates = self.redis.zrangebyscore(f"{self.prefix}jobs", "-inf", repr(cutoff), start=0, num=limit * 4)
        if not candidates:
            return []
        pipe = self.redis.pipeline(transaction=False)
        for job_id in candidates:
            pipe.hmget(self.key(job_id), "state", "finished_at")
        old = []
        for job_id, (job_state, finished_at) in zip(candidates, pipe.execute()):
            if job_state in TERMINAL_STATES and finished_at and float(finished_at) < cutoff:
                old.append(job_id)
        return old[:limit]


def encode_cursor(score: float, job_id: str) -> str:
    return base64.urlsafe_b64encode(f"{score!r}:{job_id}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[float, str]:
    """(creation time, job id) of a cursor; JobInputError 400 `invalid_cursor` when it is not one of ours."""
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        score, job_id = text.split(":")
        if not is_job_id(job_id):
            raise ValueError(job_id)
        return float(score), job_id
    except (ValueError, UnicodeDecodeError, TypeError):
        raise JobInputError(400, "invalid_cursor", "the cursor is not one this service gave out") from None


def _rate_and_eta(job: dict, planned_failed: int) -> tuple[float | None, float | None]:
    """Images per second since the first chunk started, and the seconds left at that rate (None when unknown)."""
    started = job["started_at"]
    if started is None:
        return None, None
    end = job["finished_at"] or time.time()
    processed = job["done"] + job["failed"] - planned_failed
    elapsed = max(end - started, 0.001)  # (times are stored to the millisecond)
    if processed <= 0:
        return None, None
    rate = processed / elapsed
    if job["state"] in TERMINAL_STATES:
        return round(rate, 3), None
    remaining = max(0, job["total"] - job["done"] - job["failed"])
    return round(rate, 3), round(remaining / rate, 1)


def _error_row(failure: dict) -> dict:
    return {
        "source": failure.get("source", ""),
        "reason": failure.get("reason", "unreadable"),
        "message": failure.get("message", ""),
    }


# -- safe input folders ----------------------------------------------------------------------------------------

def resolve_input_dir(data_root: Path, relative: str) -> Path:
    """A folder named relative to the data root, checked: relative, no '..', inside the root after symlinks."""
    text = (relative or "").strip()
    if not text or "\x00" in text:
        raise JobInputError(400, "invalid_path", "input_dir must be a non-empty path relative to the data root")
    if text.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", text) or PurePosixPath(text).is_absolute():
        raise JobInputError(400, "invalid_path", "input_dir must be relative to the data root, not an absolute path")
    parts = re.split(r"[\\/]+", text)
    if ".." in parts:
        raise JobInputError(400, "invalid_path", "input_dir must not contain '..'")
    root = data_root.resolve()
    try:
        target = _resolve(root / Path(*[p for p in parts if p not in ("", ".")] or ["."]))
        if not _is_within(target, root):
            raise JobInputError(403, "forbidden_path", "input_dir resolves outside the data root")
        is_dir = target.is_dir()
        is_rec = not is_dir and recordio.is_recordio(target)
        if is_rec:  # its index is read too: it must not lead outside the root either
            idx = recordio.index_path(target)
            if idx.exists() and not _is_within(_resolve(idx), root):
                raise JobInputError(403, "forbidden_path", "the .idx beside the .rec resolves outside the data root")
    except OSError as exc:  # a name too long, a loop of links, ...: not a folder we can use
        raise JobInputError(400, "invalid_path", f"input_dir cannot be used: {exc.strerror or exc}") from None
    if not is_dir and not is_rec:
        raise JobInputError(400, "input_not_found",
                            f"input_dir {text[:200]!r} is not a folder or a .rec file under the data root")
    return target


def _resolve(path: Path) -> Path:
    """`path.resolve()`, with a loop of links an OSError (Python before 3.13 raises RuntimeError for it)."""
    try:
        return path.resolve()
    except RuntimeError:
        raise OSError(errno.ELOOP, os.strerror(errno.ELOOP)) from None


def _is_within(path: Path, root: Path) -> bool:
    return path == root or root in path.parents


def _is_utf8(name: str) -> bool:
    # Names read from disk or a tar header that are not UTF-8 carry lone surrogates (surrogateescape).
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def display_name(name: str) -> str:
    """A name that can go into JSON and Redis: bytes that are not UTF-8 become U+FFFD."""
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def plan_job_sources(input_dir: Path, output_dir: Path, allowed_root: Path,
                     kind: str = "augment") -> tuple[list[str], list[dict]]:
    """Sources of a job and up-front failures: name collisions (augmentation), files that resolve outside the
    allowed root, and for a .rec input its unreadable records. Embedding jobs take what `lrface embed` takes."""
    from service.offline import plan_embed_sources, plan_sources

    failures: list[dict] = []
    if recordio.is_recordio(input_dir):
        try:
            names = plan_sources(input_dir, output_dir, errors=failures)
        except (OSError, ValueError) as exc:
            raise JobInputError(400, "bad_recordio", "the RecordIO dataset cannot be read: "
                                f"{exc.strerror if isinstance(exc, OSError) and exc.strerror else shown(str(exc))}") from None
        return names, failures
    if kind == "embed":
        planned = plan_embed_sources(input_dir, errors=failures)
    else:
        planned = plan_sources(input_dir, output_dir, errors=failures)
    root = allowed_root.resolve()
    sources = []
    for rel in planned:
        try:
            resolved = _resolve(input_dir / rel)
        except OSError as exc:
            failures.append({"source": rel, "status": "failed", "reason": "unreadable",
                             "message": f"the file cannot be read: {exc.strerror or type(exc).__name__}"})
            continue
        if not _is_utf8(rel):
            failures.append({"source": display_name(rel), "status": "failed", "reason": "bad_name",
                             "message": "the file name is not valid UTF-8"})
        elif _is_within(resolved, root):
            sources.append(rel)
        else:
            failures.append({"source": rel, "status": "failed", "reason": "outside_root",
                             "message": "the file is a link to a place outside the data root"})
    for failure in failures:  # name collisions may carry such names too
        failure["source"] = display_name(failure["source"])
    return sources, failures


def chunked(items: list[str], size: int) -> list[list[str]]:
    return [items[i:i + size] for i in range(0, len(items), size)]


# -- safe archives ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ArchiveLimits:
    max_members: int
    max_total_bytes: int
    max_ratio: float
    max_header_bytes: int = 16 * 1024 * 1024  # all tar headers together (service.archive_limits)

    @classmethod
    def from_settings(cls, settings: Settings) -> "ArchiveLimits":
        return cls(settings.max_archive_members, settings.max_archive_total_bytes, settings.max_archive_ratio,
                   settings.max_archive_header_bytes)


def _unsafe(message: str) -> JobInputError:
    return JobInputError(400, "unsafe_archive", message)


def _member_parts(name: str) -> list[str]:
    """The path parts of an archive member, or an error when it could land outside the target folder."""
    if "\x00" in name or "\\" in name:
        raise _unsafe(f"member {shown(name)!r}: backslashes and NUL bytes are not accepted in names")
    if not _is_utf8(name):
        raise _unsafe(f"member {shown(name)!r}: the name is not valid UTF-8")
    if name.startswith("/") or re.match(r"^[A-Za-z]:", name):
        raise _unsafe(f"member {shown(name)!r}: absolute paths are not accepted")
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise _unsafe(f"member {shown(name)!r}: '..' would escape the target folder")
    return parts


class _SizeBudget:
    """Running totals of an archive's declared sizes against the limits; raises as soon as one is exceeded."""

    def __init__(self, archive_bytes: int, limits: ArchiveLimits):
        self.archive_bytes = max(archive_bytes, 1)
        self.limits = limits
        self.total = 0

    def add(self, parts: list[str], size: int, packed: int | None) -> None:
        limits = self.limits
        if packed is not None and size > _RATIO_FLOOR and size > limits.max_ratio * max(packed, 1):
            raise JobInputError(413, "archive_too_large",
                                f"member {shown('/'.join(parts))!r} expands {size / max(packed, 1):.0f}x; the limit is {limits.max_ratio:g}x")
        self.total += size
        if self.total > limits.max_total_bytes:
            raise JobInputError(413, "archive_too_large",
                                f"the archive expands to more than {limits.max_total_bytes} bytes")
        if self.total > _RATIO_FLOOR and self.total > limits.max_ratio * self.archive_bytes:
            raise JobInputError(413, "archive_too_large",
                                f"the archive expands more than {limits.max_ratio:g}x")


def _too_many(limits: ArchiveLimits) -> JobInputError:
    return JobInputError(413, "archive_too_large", f"the archive has more than {limits.max_members} members")


def _write_member(dest: Path, parts: list[str], stream, size: int) -> None:
    target = dest.joinpath(*parts)
    target.parent.mkdir(parents=True, exist_ok=True)
    # O_EXCL: a second member with the same name is refused; O_NOFOLLOW: never write through a link.
    try:
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o644)
    except FileExistsError:
        raise _unsafe(f"member {shown('/'.join(parts))!r} appears twice") from None
    written = 0
    with os.fdopen(fd, "wb") as out:
        while True:
            block = stream.read(_COPY_BLOCK)
            if not block:
                break
            written += len(block)
            if written > size:  # never trust a header further than its own size
                raise _unsafe(f"member {shown('/'.join(parts))!r} holds more data than its header says")
            out.write(block)


def extract_archive(archive: Path, dest: Path, limits: ArchiveLimits) -> int:
    """`_extract_archive`, with the limits of `service.archive_limits` (header bytes, zip directories) as the
    same JobInputError answers."""
    try:
        return _extract_archive(archive, dest, limits)
    except ArchiveLimitError as exc:
        raise JobInputError(exc.status_code, exc.error, exc.message) from None


def _extract_archive(archive: Path, dest: Path, limits: ArchiveLimits) -> int:
    """Extract a zip or tar(.gz/.bz2/.xz) into the empty folder `dest` after checking every member first.

    Refused (nothing extracted): names that are absolute or contain '..', links of any kind, device files and
    FIFOs, encrypted zip members, more than `max_members` members, more than `max_total_bytes` uncompressed, or
    a compression ratio above `max_ratio`. Returns the number of files written.
    """
    archive_bytes = archive.stat().st_size
    with open(archive, "rb") as f:
        magic = f.read(4)
    dest.mkdir(parents=True, exist_ok=True)
    if magic[:2] == b"PK":
        check_zip_directory(archive, limits.max_members)  # (before zipfile builds an object per entry)
        return _extract_zip(archive, dest, archive_bytes, limits)
    if is_tar(archive, limits.max_header_bytes):
        return _extract_tar(archive, dest, archive_bytes, limits)
    raise JobInputError(415, "unsupported_archive", "the upload is not a zip or tar archive")


def _extract_zip(archive: Path, dest: Path, archive_bytes: int, limits: ArchiveLimits) -> int:
    try:
        zf = zipfile.ZipFile(archive)
    except (zipfile.BadZipFile, OSError):
        raise JobInputError(400, "bad_archive", "the zip archive is corrupt") from None
    with zf:
        infos = zf.infolist()
        if len(infos) > limits.max_members:
            raise _too_many(limits)
        members = []
        budget = _SizeBudget(archive_bytes, limits)
        for info in infos:
            parts = _member_parts(info.filename)
            mode = info.external_attr >> 16
            kind = stat.S_IFMT(mode)
            if stat.S_ISLNK(mode):
                raise _unsafe(f"member {shown(info.filename)!r} is a symbolic link")
            if kind not in (0, stat.S_IFREG, stat.S_IFDIR):
                raise _unsafe(f"member {shown(info.filename)!r} is not a regular file or folder")
            if info.flag_bits & 0x1:
                raise _unsafe(f"member {shown(info.filename)!r} is encrypted")
            members.append((parts, info.is_dir(), info.file_size, info.compress_size))
            budget.add(parts, info.file_size, info.compress_size)
        return _write_members(dest, infos, members, zf.open, "zip",
                              (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, OSError))


def _extract_tar(archive: Path, dest: Path, archive_bytes: int, limits: ArchiveLimits) -> int:
    try:
        tf = tarfile.open(archive, mode="r:*", tarinfo=bounded_tarinfo(limits.max_header_bytes))
    except (tarfile.TarError, OSError, EOFError):
        raise JobInputError(400, "bad_archive", "the tar archive is corrupt") from None
    with tf:
        infos, members = [], []
        budget = _SizeBudget(archive_bytes, limits)
        try:
            for info in tf:  # read headers one at a time, so a million-member archive stops at the limit
                if len(infos) >= limits.max_members:
                    raise _too_many(limits)
                parts = _member_parts(info.name)
                if info.issym() or info.islnk():
                    raise _unsafe(f"member {shown(info.name)!r} is a link")
                if not (info.isreg() or info.isdir()) or info.issparse():
                    raise _unsafe(f"member {shown(info.name)!r} is not a regular file or folder")
                infos.append(info)
                # A tar has no per-member compressed size: the whole (compressed) archive is the yardstick.
                # Checked as headers come, before the next header is read, so a bomb is never inflated.
                members.append((parts, info.isdir(), info.size, None))
                budget.add(parts, info.size, None)
        except (tarfile.TarError, EOFError, OSError) as exc:
            raise JobInputError(400, "bad_archive", f"the tar archive is corrupt: {shown(str(exc))}") from None

        def open_member(info: tarfile.TarInfo):
            stream = tf.extractfile(info)
            if stream is None:
                raise _unsafe(f"member {shown(info.name)!r} has no data")
            return stream

        return _write_members(dest, infos, members, open_member, "tar", (tarfile.TarError, EOFError, OSError))


def _write_members(dest: Path, infos: list, members: list[tuple], open_member: Callable,
                   archive_kind: str, errors: tuple[type[BaseException], ...]) -> int:
    """Write the checked members (folders made, files streamed through `_write_member`); returns the file count.

    `open_member(info)` gives a member's data stream; `errors` are the archive library's read errors, reported as
    a corrupt `archive_kind` archive (or as overlapping members, when a path is already a file or a folder)."""
    written = 0
    try:
        for info, (parts, is_dir, size, _) in zip(infos, members):
            if not parts:
                continue
            if is_dir:
                dest.joinpath(*parts).mkdir(parents=True, exist_ok=True)
                continue
            with open_member(info) as stream:
                _write_member(dest, parts, stream, size)
            written += 1
    except errors as exc:
        if isinstance(exc, (FileExistsError, NotADirectoryError, IsADirectoryError)):
            # (the error's text names a server path: not shown)
            raise _unsafe(f"the archive's members overlap each other ({exc.strerror})") from None
        if isinstance(exc, OSError) and exc.filename is not None:
            raise JobInputError(400, "bad_archive", f"the {archive_kind} archive cannot be extracted: "
                                f"{exc.strerror or type(exc).__name__}") from None
        raise JobInputError(400, "bad_archive", f"the {archive_kind} archive is corrupt: {shown(str(exc))}") from None
    return written


# -- creating and finishing jobs -------------------------------------------------------------------------------

def job_output_dir(settings: Settings, job_id: str) -> Path:
    return settings.jobs_root_path / job_id


def submit_job(store: JobStore, settings: Settings, *, job_id: str, params: JobParams, input_dir: Path,
               allowed_root: Path, input_label: str, enqueue, owner: str = "", max_sources: int | None = None) -> dict:
    """Plan the sources, store the job, and fan out one task per chunk with `enqueue(job_id, index, paths)`.

    `max_sources`: the most images (records) the input may hold (an uploaded .rec, whose records are not files)."""
    output_dir = job_output_dir(settings, job_id)
    sources, failures = plan_job_sources(input_dir, output_dir, allowed_root, params.kind)
    if max_sources is not None and len(sources) + len(failures) > max_sources:
        raise JobInputError(413, "archive_too_large", f"the upload holds more than {max_sources} records")
    if not sources:
        detail = f" ({len(failures)} files could not be used)" if failures else ""
        raise JobInputError(422, "no_images", f"no images were found in the job's input{detail}")
    chunks = chunked(sources, settings.chunk_size)
    if not store.admit(job_id, settings.max_active_jobs):
        raise JobInputError(429, "too_many_jobs", f"{settings.max_active_jobs} jobs are queued or running, the most "
                                                  "this service takes; try again when one has finished")
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
        store.create(job_id, params=params, input_dir=input_dir, output_dir=output_dir, input_label=input_label,
                     sources=sources, failures=failures, chunks_total=len(chunks), chunk_size=settings.chunk_size,
                     owner=owner)
    except BaseException:
        try:
            store.release(job_id)
        except Exception:
            pass  # Redis is gone: prune_active drops the id later (the job has no state)
        raise
    try:
        for index, paths in enumerate(chunks):
            enqueue(job_id, index, paths)
    except Exception as exc:
        try:
            store.fail(job_id, f"the broker refused the job's tasks: {type(exc).__name__}")
        except Exception:
            pass  # the broker and the job store are often the same Redis
        raise JobInputError(503, "broker_unavailable", "the job could not be queued: the broker is unreachable") from None
    return store.get(job_id)


def remove_stray_temps(output_dir: Path) -> int:
    """Temp files left by a worker killed mid-write (they are never renamed into place)."""
    removed = 0
    for dirpath, _, filenames in os.walk(output_dir):
        for name in filenames:
            if _STRAY_TEMP.match(name):
                Path(dirpath, name).unlink(missing_ok=True)
                removed += 1
    return removed


def remove_tree(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


def _remove_own_folder(root: Path, name: str) -> bool:
    """Remove ROOT/NAME, never anything outside it: a link in its place is unlinked (its target is left alone),
    links inside it are removed as links (shutil.rmtree does not follow them)."""
    path = root / name
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return False
    if stat.S_ISDIR(st.st_mode):
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)
    return True


def remove_job_files(settings: Settings, job_id: str) -> None:
    """A job's own files: its output folder and its uploaded input (by id, never by a path stored in Redis)."""
    if not is_job_id(job_id):
        raise ValueError(f"not a job id: {job_id!r}")
    _remove_own_folder(settings.jobs_root_path, job_id)
    _remove_own_folder(settings.uploads_root_path, job_id)
    _remove_own_folder(settings.uploads_root_path, f"{job_id}.upload")


def remove_job_input(settings: Settings, job_id: str) -> None:
    """A finished job's uploaded input (the extracted archive or .rec, and the archive if it is still there):
    not needed any more once the job succeeded, failed or was cancelled."""
    if not is_job_id(job_id):
        raise ValueError(f"not a job id: {job_id!r}")
    _remove_own_folder(settings.uploads_root_path, job_id)
    _remove_own_folder(settings.uploads_root_path, f"{job_id}.upload")


def clean_orphan_uploads(store: JobStore, settings: Settings, min_age_s: float) -> int:
    """Remove what the uploads folder holds for jobs that finished or do not exist (a crash in the middle of an
    upload or extraction leaves such folders); entries younger than `min_age_s` whose job does not exist (yet)
    are left alone: another API process may be receiving or extracting that upload. Returns how many went."""
    root = settings.uploads_root_path
    try:
        entries = list(os.scandir(root))
    except FileNotFoundError:
        return 0
    removed, now = 0, time.time()
    for entry in entries:
        job_id = entry.name.removesuffix(".upload")
        if not is_job_id(job_id):
            continue
        job = store.get(job_id, errors_limit=0)
        if job is not None and job["state"] not in TERMINAL_STATES:
            continue
        if job is None:
            try:
                age = now - entry.stat(follow_symlinks=False).st_mtime
            except FileNotFoundError:
                continue
            if age < min_age_s:
                continue
        if _remove_own_folder(root, entry.name):
            removed += 1
    if removed:
        log.info("removed %d upload folder(s) of finished or vanished jobs from the uploads folder", removed)
    return removed


def purge_job(store: JobStore, settings: Settings, job_id: str) -> None:
    """Cancel the job when it is still active, then remove its files and its state."""
    store.cancel(job_id)
    store.delete(job_id)
    remove_job_files(settings, job_id)


def purge_expired_jobs(store: JobStore, settings: Settings, now: float | None = None) -> list[str]:
    """Purge the jobs that finished more than LRFACE_JOB_RETENTION_S ago (none when it is 0); returns their ids."""
    if not settings.job_retention_s:
        return []
    now = time.time() if now is None else now
    expired = store.finished_before(now - settings.job_retention_s)
    for job_id in expired:
        purge_job(store, settings, job_id)
    if expired:
        log.info("retention: purged %d jobs that finished more than %.0f s ago", len(expired), settings.job_retention_s)
    return expired


def owner_of(authorization: str | None, settings: Settings) -> str | None:
    """The owner recorded with a job: a fingerprint of the caller's API key (never the key); None when API keys
    are off (every caller sees every job)."""
    if not settings.api_keys:
        return None
    _, _, token = (authorization or "").partition(" ")
    return hashlib.sha256(token.strip().encode()).hexdigest()[:24]


# -- chunk tasks the broker lost ---------------------------------------------------------------------------------
#
# Celery's Redis transport takes a task off the queue (BRPOP) before it records it as unacknowledged: a worker
# killed in between loses the task for good (celery/kombu#305, celery/celery#7950), and its job would stay
# "running" for ever. Tasks of dead workers that *were* recorded come back by themselves after the visibility
# timeout. So for a job without progress for `job_stall_timeout`, the sweeper takes stock of the broker (the queue
# and the unacknowledged tasks) and queues again only the chunks that are neither done nor anywhere there (and
# the finalizer when every chunk is done). Chunk tasks are idempotent, so a chunk queued twice by a race costs
# time, never correctness.

_ARGSREPR = re.compile(r"^\(\s*'([0-9a-f]{32})'\s*,\s*(\d+)?")


def _task_of(raw: str) -> tuple[str, str, int | None] | None:
    """(task name, job id, chunk index or None) of a Celery message as kombu stores it in Redis."""
    try:
        message = json.loads(raw)
        if isinstance(message, list):  # the unacked hash holds [message, exchange, routing_key]
            message = message[0]
        headers = message.get("headers") or {}
        name = headers.get("task", "")
        if not name.startswith("lrface."):
            return None
        match = _ARGSREPR.match(headers.get("argsrepr") or "")
        if match:
            return name, match.group(1), int(match.group(2)) if match.group(2) else None
        args = json.loads(base64.b64decode(message["body"]))[0]
        return name, str(args[0]), int(args[1]) if len(args) > 1 else None
    except Exception:
        return None


def broker_inventory(broker, queue: str, job_ids: set[str]) -> dict[str, set]:
    """For each of `job_ids`: the chunk indexes (and "finalize") of its tasks waiting in the queue or held
    unacknowledged by a worker."""
    found: dict[str, set] = {job_id: set() for job_id in job_ids}

    def note(raw) -> None:
        raw = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw
        if not any(job_id in raw for job_id in job_ids):
            return
        task = _task_of(raw)
        if task and task[1] in found:
            found[task[1]].add("finalize" if task[0] == "lrface.finalize_job" else task[2])

    length = broker.llen(queue)
    for start in range(0, length, 500):
        for raw in broker.lrange(queue, start, start + 499):
            note(raw)
    for _, raw in broker.hscan_iter("unacked", count=500):
        note(raw)
    return found


def recover_lost_tasks(store: JobStore, broker, settings: Settings, enqueue_chunk, enqueue_finalize,
                       now: float | None = None) -> dict[str, list]:
    """Queue again the chunk tasks (or the finalizer) of stalled active jobs that the broker no longer has.

    Returns {job id: [chunk indexes queued again, plus "finalize" when it was]} for the jobs it touched.
    """
    now = time.time() if now is None else now
    stalled = {}
    for job_id in store.redis.smembers(store.active_key):
        job = store.get(job_id, errors_limit=0)
        if job is None or job["state"] not in ("queued", "running") or store.is_cancelled(job_id):
            continue
        if now - job["updated_at"] >= settings.job_stall_timeout:
            stalled[job_id] = job
    if not stalled:
        return {}
    present = broker_inventory(broker, settings.queue, set(stalled))
    recovered: dict[str, list] = {}
    for job_id, job in stalled.items():
        done = {int(c) for c in store.redis.smembers(store.key(job_id, "chunks"))}
        missing = [c for c in range(job["chunks_total"]) if c not in done and c not in present[job_id]]
        again: list = []
        if missing:
            size = int(store.redis.hget(store.key(job_id), "chunk_size") or 0)
            sources = store.sources(job_id)
            if size < 1:  # a job stored before chunk sizes were: its chunks cannot be rebuilt
                log.warning("job %s looks stalled but its chunk size is unknown; not recovering it", job_id)
                continue
            for chunk in missing:
                enqueue_chunk(job_id, chunk, sources[chunk * size:(chunk + 1) * size])
            again += missing
        elif len(done) >= job["chunks_total"] and "finalize" not in present[job_id]:
            enqueue_finalize(job_id)
            again.append("finalize")
        store.redis.hset(store.key(job_id), "updated_at", f"{now:.3f}")  # next look after another stall period
        if again:
            store.redis.hincrby(store.key(job_id), "recovered", len(again))
            log.warning("job %s made no progress for %.0f s and the broker had lost tasks of it: queued %s again",
                        job_id, now - job["updated_at"], again)
            recovered[job_id] = again
    return recovered

