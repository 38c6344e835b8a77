"""Creating a job (plan, store, fan out into chunk tasks) and removing it (cancel, purge, retention)."""
from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
import stat
import time
from pathlib import Path

from lrface.service.jobs.inputs import chunked, plan_job_sources
from lrface.service.jobs.params import TERMINAL_STATES, JobInputError, JobParams, is_job_id
from lrface.service.jobs.store import JobStore
from lrface.service.settings import Settings

log = logging.getLogger("lrface.jobs")

_STRAY_TEMP = re.compile(r"^\..+\.\d+\.\d+\.tmp$")  # lrface.core.files.write_atomic's temp names


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
