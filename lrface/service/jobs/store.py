"""Job state in Redis: one `JobStore` shared by the API (create, read, cancel) and the workers (progress, finish).

Redis keys (prefix `settings.key_prefix`, default "lrface:"):
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
import json
import time
from pathlib import Path

import redis

from lrface.service.jobs.params import TERMINAL_STATES, JobInputError, JobParams, is_job_id
from lrface.service.settings import Settings

# Buckets (seconds) of the job duration histogram (lrface_job_duration_seconds).
DURATION_BUCKETS = (1, 5, 15, 60, 300, 900, 3600, 14400, 86400)
PURGED_TOMBSTONE_S = 24 * 3600  # a purged job's cancel flag stays this long, so chunk tasks still queued do nothing
MAX_ERRORS_SHOWN = 1000


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
