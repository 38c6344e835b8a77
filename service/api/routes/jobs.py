"""/v1/jobs: bulk augmentation of a whole folder (or an uploaded archive) by the Celery workers."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

import pydantic
from fastapi import APIRouter, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile

from service.api.deps import JobStoreDep, ServicesDep, SettingsDep
from service.api.errors import APIError
from service.api.routes.synthesize import check_synthesis_params, random_seed
from service.jobs import (
    ArchiveLimits,
    JobInputError,
    JobParams,
    extract_archive,
    new_job_id,
    remove_tree,
    resolve_input_dir,
    submit_job,
)
from service.offline import MANIFEST_NAME

router = APIRouter(prefix="/v1", tags=["jobs"])

_COPY_BLOCK = 1024 * 1024


class JobOptions(BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid")

    variants: int = Field(4, ge=1, description="LR variants per face, 1..LRFACE_MAX_VARIANTS (64)")
    seed: int | None = Field(None, ge=0, description="run seed; random (and returned) when omitted")
    height: int | None = Field(None, description="fixed LR height in px")
    min_height: int | None = None
    max_height: int | None = None
    canvas: bool = Field(False, description="write 112x96 canvases instead of native LR sizes")


class JobCreate(JobOptions):
    input_dir: str = Field(description="folder of aligned faces, relative to the server's data root (LRFACE_DATA_ROOT)")


class Counts(BaseModel):
    total: int
    done: int
    failed: int


class ChunkCounts(BaseModel):
    total: int
    done: int


class JobFailure(BaseModel):
    source: str
    reason: str
    message: str


class JobOut(BaseModel):
    job_id: str
    state: Literal["queued", "running", "succeeded", "failed", "cancelled"]
    input: str = Field(description="the input_dir, or 'upload:<archive name>'")
    params: dict
    counts: Counts
    chunks: ChunkCounts
    errors: list[JobFailure] = Field(description="per-file failures (the first 1000)")
    errors_total: int
    error: str | None = Field(description="why the whole job failed, if it did")
    model_id: str | None
    output_dir: str = Field(description="where the outputs are written on the server: <jobs root>/<job_id>/")
    manifest_url: str
    created_at: float
    updated_at: float
    finished_at: float | None


def job_out(job: dict) -> JobOut:
    return JobOut(
        job_id=job["job_id"], state=job["state"], input=job["input"], params=job["params"],
        counts=Counts(total=job["total"], done=job["done"], failed=job["failed"]),
        chunks=ChunkCounts(total=job["chunks_total"], done=job["chunks_done"]),
        errors=[JobFailure(**e) for e in job["errors"]], errors_total=job["errors_total"], error=job["error"],
        model_id=job["model_id"], output_dir=job["output_dir"], manifest_url=f"/v1/jobs/{job['job_id']}/manifest",
        created_at=job["created_at"], updated_at=job["updated_at"], finished_at=job["finished_at"],
    )


def _validate(model: type[BaseModel], data) -> BaseModel:
    try:
        return model.model_validate(data)
    except pydantic.ValidationError as exc:
        raise RequestValidationError([{**e, "loc": ("body", *e["loc"])} for e in exc.errors()]) from None


# Errors about input_dir say which setting defines the root it is relative to (the server's path is not shown).
_INPUT_DIR_ERRORS = ("invalid_path", "forbidden_path", "input_not_found")
DATA_ROOT_HINT = ("input_dir is relative to the server's data root, set by LRFACE_DATA_ROOT "
                  "(default: LRFACE_STATE_DIR/data, i.e. ~/.cache/lrface/data)")


def _job_error(exc: JobInputError, settings=None) -> APIError:
    if exc.error in _INPUT_DIR_ERRORS:
        return APIError(exc.status_code, exc.error, f"{exc.message}; {DATA_ROOT_HINT}")
    headers = None
    if settings is not None and exc.status_code == 429:
        headers = {"Retry-After": str(settings.jobs_retry_after_s)}
    elif settings is not None and exc.status_code == 503:
        headers = {"Retry-After": str(settings.retry_after_s)}
    return APIError(exc.status_code, exc.error, exc.message, headers=headers)


def _too_many_jobs(settings) -> APIError:
    return _job_error(JobInputError(429, "too_many_jobs", f"{settings.max_active_jobs} jobs are queued or running, the "
                                                          "most this service takes; try again when one has finished"),
                      settings)


def _jobs_full(store, settings) -> bool:
    """A cheap early check (the place is taken for real, atomically, when the job is stored)."""
    if store.active_count() < settings.max_active_jobs:
        return False
    store.prune_active()
    return store.active_count() >= settings.max_active_jobs


async def _read_json_body(request: Request, limit: int):
    size, chunks = 0, []
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise APIError(413, "payload_too_large", f"a JSON job spec may be at most {limit} bytes",
                           headers={"Connection": "close"})
        chunks.append(chunk)
    try:
        return json.loads(b"".join(chunks) or b"null")
    except (ValueError, RecursionError):  # (RecursionError: absurdly deep nesting)
        raise APIError(422, "validation_error", "the body is not valid JSON") from None


_PARAM_SCHEMA = {name: field for name, field in JobCreate.model_json_schema()["properties"].items()}
_OPENAPI_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": JobCreate.model_json_schema()},
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["archive"],
                    "properties": {
                        "archive": {"type": "string", "format": "binary",
                                    "description": "zip or tar(.gz/.bz2/.xz) of face images"},
                        **{k: v for k, v in _PARAM_SCHEMA.items() if k != "input_dir"},
                    },
                }
            },
        },
    }
}

CREATE_DESCRIPTION = """
Start a bulk augmentation job: every image of a folder gets `variants` LR variants, written by the workers to
`<jobs root>/<job_id>/<relative path without extension>_<k>.png` with a `manifest.jsonl`, exactly as
`lrface augment` would.

Either a JSON body naming a folder under the server's data root (`input_dir`, relative; nothing outside the root
is reachable, also through links), or a multipart upload of a zip / tar archive as `archive` with the same
parameters as form fields. Archives are checked before anything is extracted: absolute or `..` names, links,
device files, too many members, too many uncompressed bytes or too high a compression ratio are refused.

Answers 202 with the job; poll `GET /v1/jobs/{job_id}`.
"""


@router.post("/jobs", status_code=202, response_model=JobOut, summary="start a bulk augmentation job",
             description=CREATE_DESCRIPTION, openapi_extra=_OPENAPI_BODY,
             responses={400: {"description": "bad path or unsafe archive"}, 403: {"description": "path outside the data root"},
                        413: {"description": "archive too large"},
                        429: {"description": "too many jobs queued or running (LRFACE_MAX_ACTIVE_JOBS); see Retry-After"},
                        503: {"description": "broker unavailable"}})
async def create_job(request: Request, services: ServicesDep, settings: SettingsDep, store: JobStoreDep):
    from service.tasks import enqueue_chunk

    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    job_id = new_job_id()
    cleanup: Path | None = None
    if content_type == "application/json" or content_type.endswith("+json"):
        body = await _read_json_body(request, settings.max_json_body_bytes)
        spec = _validate(JobCreate, body)
        options = spec
        root = settings.data_root_path
        try:
            input_dir = resolve_input_dir(root, spec.input_dir)
        except JobInputError as exc:
            raise _job_error(exc) from None
        if await run_in_threadpool(_jobs_full, store, settings):
            raise _too_many_jobs(settings)
        label = spec.input_dir
    elif content_type == "multipart/form-data":
        if await run_in_threadpool(_jobs_full, store, settings):  # before the archive is stored and extracted
            raise _too_many_jobs(settings)
        async with request.form(max_files=1, max_fields=16) as form:
            archive = form.get("archive")
            if not isinstance(archive, UploadFile):
                raise APIError(422, "validation_error", "multipart jobs need the archive as the file field `archive`")
            fields = {k: v for k, v in form.multi_items() if k != "archive" and isinstance(v, str) and v != ""}
            options = _validate(JobOptions, fields)
            _check_options(settings, services, options)
            uploads = settings.uploads_root_path
            uploads.mkdir(parents=True, exist_ok=True)
            stored = uploads / f"{job_id}.upload"
            root = input_dir = uploads / job_id
            cleanup = input_dir
            try:
                await _save_upload(archive, stored, settings.max_archive_bytes)
                await run_in_threadpool(extract_archive, stored, input_dir, ArchiveLimits.from_settings(settings))
            except JobInputError as exc:
                remove_tree(input_dir)
                raise _job_error(exc) from None
            except BaseException:
                remove_tree(input_dir)
                raise
            finally:
                stored.unlink(missing_ok=True)
            label = f"upload:{Path(archive.filename or 'archive').name}"
    else:
        raise APIError(415, "unsupported_media_type", "send JSON (input_dir) or multipart/form-data (archive)")

    seed = random_seed() if options.seed is None else options.seed
    _check_options(settings, services, options, seed)
    params = JobParams(options.variants, seed, options.height, options.min_height, options.max_height, options.canvas)
    try:
        job = await run_in_threadpool(submit_job, store, settings, job_id=job_id, params=params, input_dir=input_dir,
                                      allowed_root=root, input_label=label, enqueue=enqueue_chunk)
    except JobInputError as exc:
        if cleanup is not None:
            remove_tree(cleanup)
        raise _job_error(exc, settings) from None
    except BaseException:
        if cleanup is not None:
            remove_tree(cleanup)
        raise
    services.metrics.jobs_submitted.inc()
    return JSONResponse(job_out(job).model_dump(), status_code=202, headers={"Location": f"/v1/jobs/{job_id}"})


def _check_options(settings, services, options: JobOptions, seed: int = 0) -> None:
    check_synthesis_params(settings, services.models.get("synthesizer"), variants=options.variants, seed=seed,
                           height=options.height, min_height=options.min_height, max_height=options.max_height)


async def _save_upload(upload: UploadFile, target: Path, limit: int) -> None:
    size = 0
    with open(target, "wb") as out:
        while True:
            block = await upload.read(_COPY_BLOCK)
            if not block:
                break
            size += len(block)
            if size > limit:
                raise JobInputError(413, "archive_too_large", f"the archive exceeds {limit} bytes")
            out.write(block)


def _get_or_404(store, job_id: str) -> dict:
    job = store.get(job_id)
    if job is None:
        raise APIError(404, "job_not_found", f"no job {job_id!r}")
    return job


@router.get("/jobs/{job_id}", response_model=JobOut, summary="a job's state and progress",
            responses={404: {"description": "unknown job"}})
async def get_job(job_id: str, store: JobStoreDep) -> JobOut:
    return job_out(await run_in_threadpool(_get_or_404, store, job_id))


@router.get("/jobs/{job_id}/manifest", summary="the job's manifest.jsonl", response_class=FileResponse,
            responses={200: {"content": {"application/x-ndjson": {}}}, 404: {"description": "unknown job"},
                       409: {"description": "the job has not succeeded (yet)"}})
async def get_manifest(job_id: str, store: JobStoreDep):
    job = await run_in_threadpool(_get_or_404, store, job_id)
    path = Path(job["output_dir"]) / MANIFEST_NAME
    if job["state"] != "succeeded" or not path.is_file():
        raise APIError(409, "manifest_not_ready", f"the manifest is written when the job succeeds; the job is {job['state']}")
    return FileResponse(path, media_type="application/x-ndjson", filename=f"{job_id}-manifest.jsonl")


@router.delete("/jobs/{job_id}", response_model=JobOut, summary="cancel a job",
               description="Cancels a queued or running job: chunks not yet started do nothing, running chunks stop "
                       "between sources. Outputs already written stay. A finished job answers 409.",
               responses={404: {"description": "unknown job"}, 409: {"description": "the job already finished"}})
async def cancel_job(job_id: str, store: JobStoreDep) -> JobOut:
    def cancel():
        job = _get_or_404(store, job_id)
        if job["state"] in ("succeeded", "failed"):
            raise APIError(409, "job_finished", f"the job already {job['state']}")
        store.cancel(job_id)
        return store.get(job_id)

    return job_out(await run_in_threadpool(cancel))
