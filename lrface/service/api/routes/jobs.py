"""/v1/jobs: bulk augmentation or embedding of a whole folder, RecordIO dataset or uploaded archive by the Celery
workers; listing, progress, downloads, cancellation and purging."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

import pydantic
from fastapi import APIRouter, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile

from lrface.service.api.deps import JobStoreDep, ServicesDep, SettingsDep
from lrface.service.api.errors import APIError
from lrface.service.api.job_outputs import TarStream, iter_zip, parse_range
from lrface.service.api.routes.synthesize import random_seed, synthesis_params
from lrface.service.jobs.archives import ArchiveLimits, extract_archive
from lrface.service.jobs.inputs import resolve_input_dir
from lrface.service.jobs.lifecycle import owner_of, purge_job, remove_job_input, remove_tree, submit_job
from lrface.service.jobs.params import JobInputError, JobParams, is_job_id, new_job_id
from lrface.core.embedder import EmbedderName
from lrface.core.files import MANIFEST_NAME
from lrface.core.params import AugmentParams
from lrface.core.recordio import starts_with_magic
from lrface.service.settings import Settings

router = APIRouter(prefix="/v1", tags=["jobs"])

_COPY_BLOCK = 1024 * 1024
_MAX_VARIANTS = Settings.model_fields["max_variants"].default  # (for the parameter's description)


_SYNTHESIS_FIELDS = ("variants", "seed", "height", "min_height", "max_height", "canvas")


class JobOptions(BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid")

    kind: Literal["augment", "embed"] = Field(
        "augment", description="augment: LR variants of every face (the default); embed: embeddings.npz of every "
        "face, as `lrface embed` writes it (the synthesis fields do not apply)")
    variants: int = Field(4, ge=1, description=f"LR variants per face, 1..LRFACE_MAX_VARIANTS ({_MAX_VARIANTS})")
    seed: int | None = Field(None, ge=0, description="run seed; random (and returned) when omitted")
    height: int | None = Field(None, description="fixed LR height in px")
    min_height: int | None = None
    max_height: int | None = None
    canvas: bool = Field(False, description="write 112x96 canvases instead of native LR sizes")
    model: EmbedderName | None = Field(
        None, description="kind=embed only: which embedder, full (the default) or lite (a third of the compute), as "
        "`model` of /v1/embed and `--model` of `lrface embed`")


class JobCreate(JobOptions):
    input_dir: str = Field(description="folder of aligned faces, or a RecordIO .rec file (its .idx beside it), "
                                       "relative to the server's data root (LRFACE_DATA_ROOT)")


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
    kind: Literal["augment", "embed"]
    state: Literal["queued", "running", "succeeded", "failed", "cancelled"]
    input: str = Field(description="the input_dir, or 'upload:<archive name>'")
    params: dict
    counts: Counts = Field(description="images: total, done (grows as each model batch of images finishes, not "
                                       "per chunk) and failed")
    rate: float | None = Field(None, description="images per second since the job started (None before)")
    eta_s: float | None = Field(None, description="seconds left at that rate, while the job is running")
    chunks: ChunkCounts
    errors: list[JobFailure] = Field(description="per-file failures (the first 1000)")
    errors_total: int
    error: str | None = Field(description="why the whole job failed, if it did")
    model_id: str | None
    output_dir: str = Field(description="where the outputs are written on the server: <jobs root>/<job_id>/")
    manifest_url: str
    outputs_url: str = Field(description="the outputs as one archive, once the job succeeded (?format=tar|zip)")
    created_at: float
    started_at: float | None
    updated_at: float
    finished_at: float | None


class JobList(BaseModel):
    jobs: list[JobOut] = Field(description="newest first; `errors` is left empty here (see `errors_total`)")
    next_cursor: str | None = Field(description="pass as `cursor` for the next page; None on the last page")


class JobPurged(BaseModel):
    job_id: str
    purged: bool
    state: str = Field(description="the job's state before it was purged")


def job_out(job: dict) -> JobOut:
    return JobOut(
        job_id=job["job_id"], kind=job["kind"], state=job["state"], input=job["input"], params=job["params"],
        counts=Counts(total=job["total"], done=job["done"], failed=job["failed"]), rate=job["rate"],
        eta_s=job["eta_s"], chunks=ChunkCounts(total=job["chunks_total"], done=job["chunks_done"]),
        errors=[JobFailure(**e) for e in job["errors"]], errors_total=job["errors_total"], error=job["error"],
        model_id=job["model_id"], output_dir=job["output_dir"], manifest_url=f"/v1/jobs/{job['job_id']}/manifest",
        outputs_url=f"/v1/jobs/{job['job_id']}/outputs", created_at=job["created_at"], started_at=job["started_at"],
        updated_at=job["updated_at"], finished_at=job["finished_at"],
    )


def _owner(request: Request, settings) -> str | None:
    return owner_of(request.headers.get("authorization"), settings)


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
                                    "description": "zip or tar(.gz/.bz2/.xz) of face images, or a RecordIO .rec"},
                        **{k: v for k, v in _PARAM_SCHEMA.items() if k != "input_dir"},
                    },
                }
            },
        },
    }
}

CREATE_DESCRIPTION = """
Start a bulk job over every face of a folder, a RecordIO dataset or an uploaded archive.

- `kind: "augment"` (the default): every face gets `variants` LR variants, written by the workers to
  `<jobs root>/<job_id>/<relative path without extension>_<k>.png` with a `manifest.jsonl`, exactly as
  `lrface augment` would.
- `kind: "embed"`: `embeddings.npz` with `paths`, `embeddings` and `model_id`, exactly as `lrface embed` writes it, and a
  `manifest.jsonl` (one `{"source", "row"}` line per embedded face), by the embedder `model` names (`full`, the
  default, or `lite`). The synthesis fields do not apply. As
  `lrface embed` and `/v1/embed` without `align`, an image shaped like an aligned 112x96 crop is taken as one and
  any other has its most prominent face detected and aligned first; an image where no face is found is a
  failure (`no_face` in `errors.jsonl`).

Either a JSON body naming a folder or a `.rec` file under the server's data root (`input_dir`, relative; nothing
outside the root is reachable, also through links), or a multipart upload as `archive` (a zip / tar archive, or a
RecordIO `.rec`) with the same parameters as form fields. RecordIO image records are named
`<label>/<record id>`. Archives are checked before anything is extracted: absolute or `..` names, links, device
files, too many members, too many uncompressed bytes or too high a compression ratio are refused.

Answers 202 with the job; poll `GET /v1/jobs/{job_id}`, download with `GET /v1/jobs/{job_id}/outputs`.
"""


@router.post("/jobs", status_code=202, response_model=JobOut, summary="start a bulk augmentation or embedding job",
             description=CREATE_DESCRIPTION, openapi_extra=_OPENAPI_BODY,
             responses={400: {"description": "bad path or unsafe archive"}, 403: {"description": "path outside the data root"},
                        413: {"description": "archive too large"},
                        429: {"description": "too many jobs queued or running (LRFACE_MAX_ACTIVE_JOBS); see Retry-After"},
                        503: {"description": "broker unavailable"}})
async def create_job(request: Request, services: ServicesDep, settings: SettingsDep, store: JobStoreDep):
    from lrface.service.tasks import enqueue_chunk

    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    job_id = new_job_id()
    cleanup: Path | None = None
    uploaded_rec = False
    if content_type == "application/json" or content_type.endswith("+json"):
        body = await _read_json_body(request, settings.max_json_body_bytes)
        spec = _validate(JobCreate, body)
        options = spec
        _check_kind(options)
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
            _check_kind(options)  # (before the archive is stored)
            if options.kind == "augment":
                _check_options(settings, services, options)
            uploads = settings.uploads_root_path
            uploads.mkdir(parents=True, exist_ok=True)
            stored = uploads / f"{job_id}.upload"
            root = input_dir = uploads / job_id
            cleanup = input_dir
            try:
                await _save_upload(archive, stored, settings.max_archive_bytes)
                if await run_in_threadpool(starts_with_magic, stored):
                    # A RecordIO dataset: kept as it is (nothing extracted); records are read where they are.
                    input_dir.mkdir(parents=True)
                    stored.rename(input_dir / "input.rec")
                    input_dir = input_dir / "input.rec"
                    uploaded_rec = True
                else:
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

    if options.kind == "embed":
        params = JobParams.embedding(options.model or "full")
    else:
        seed = random_seed() if options.seed is None else options.seed
        params = JobParams(**_check_options(settings, services, options, seed).synthesis())
    try:
        job = await run_in_threadpool(submit_job, store, settings, job_id=job_id, params=params, input_dir=input_dir,
                                      allowed_root=root, input_label=label, enqueue=enqueue_chunk,
                                      owner=_owner(request, settings) or "",
                                      max_sources=settings.max_archive_members if uploaded_rec else None)
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


def _check_kind(options: JobOptions) -> None:
    """The synthesis fields belong to augmentation jobs and `model` to embedding jobs: a job given the other
    kind's field is refused (422)."""
    given = sorted(set(options.model_fields_set) & set(_SYNTHESIS_FIELDS))
    if options.kind == "embed" and given:
        raise APIError(422, "validation_error", f"{', '.join(given)} apply to augmentation jobs, not to kind=embed")
    if options.kind == "augment" and options.model is not None:
        raise APIError(422, "validation_error", "model applies to embedding jobs (kind=embed), not to augmentation jobs")


def _check_options(settings, services, options: JobOptions, seed: int = 0) -> AugmentParams:
    return synthesis_params(settings, services.models.get("synthesizer"), variants=options.variants, seed=seed,
                            height=options.height, min_height=options.min_height, max_height=options.max_height,
                            canvas=options.canvas)


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


def _get_or_404(store, job_id: str, owner: str | None = None) -> dict:
    """The job, or 404 when there is none or (API keys on) it belongs to another key."""
    job = store.get(job_id)
    if job is None or (owner is not None and job["owner"] != owner):
        raise APIError(404, "job_not_found", f"no job {job_id!r}")
    return job


LIST_DESCRIPTION = """
Jobs newest first, `limit` per page; pass the answer's `next_cursor` as `cursor` for the next page (pages neither
repeat nor skip a job, also while new jobs arrive). `state` keeps jobs in that state only. With API keys on, a key
sees only the jobs it submitted.
"""


@router.get("/jobs", response_model=JobList, summary="list jobs, newest first", description=LIST_DESCRIPTION,
            responses={400: {"description": "a cursor this service did not give out"}})
async def list_jobs(request: Request, store: JobStoreDep, settings: SettingsDep,
                    limit: int = Query(20, ge=1, le=200, description="jobs per page"),
                    cursor: str | None = Query(None, max_length=200, description="`next_cursor` of the previous page"),
                    state: Literal["queued", "running", "succeeded", "failed", "cancelled"] | None = Query(None)) -> JobList:
    owner = _owner(request, settings)

    def page():
        try:
            return store.list_jobs(limit, cursor, state, owner)
        except JobInputError as exc:
            raise _job_error(exc) from None

    jobs, next_cursor = await run_in_threadpool(page)
    return JobList(jobs=[job_out(j) for j in jobs], next_cursor=next_cursor)


@router.get("/jobs/{job_id}", response_model=JobOut, summary="a job's state and progress",
            responses={404: {"description": "unknown job"}})
async def get_job(job_id: str, request: Request, store: JobStoreDep, settings: SettingsDep) -> JobOut:
    return job_out(await run_in_threadpool(_get_or_404, store, job_id, _owner(request, settings)))


@router.get("/jobs/{job_id}/manifest", summary="the job's manifest.jsonl", response_class=FileResponse,
            responses={200: {"content": {"application/x-ndjson": {}}}, 404: {"description": "unknown job"},
                       409: {"description": "the job has not succeeded (yet)"}})
async def get_manifest(job_id: str, request: Request, store: JobStoreDep, settings: SettingsDep):
    job = await run_in_threadpool(_get_or_404, store, job_id, _owner(request, settings))
    path = Path(job["output_dir"]) / MANIFEST_NAME
    if job["state"] != "succeeded" or not path.is_file():
        raise APIError(409, "manifest_not_ready", f"the manifest is written when the job succeeds; the job is {job['state']}")
    return FileResponse(path, media_type="application/x-ndjson", filename=f"{job_id}-manifest.jsonl")


OUTPUTS_DESCRIPTION = """
The outputs of a job that succeeded, as one archive streamed by the server (constant memory, whatever the job's
size): every file of the job's folder (variants or `embeddings.npz`, `manifest.jsonl`, `errors.jsonl`) under
`<job_id>/`.

- `format=tar` (default): uncompressed tar with a `Content-Length`; resumable with `Range: bytes=START-`
  (206 Partial Content; `ETag` + `If-Range` tell a changed archive apart).
- `format=zip`: stored (uncompressed) zip, streamed; not resumable (`Accept-Ranges: none`).
"""


@router.get("/jobs/{job_id}/outputs", summary="download a finished job's outputs as one archive",
            description=OUTPUTS_DESCRIPTION, response_class=StreamingResponse,
            responses={200: {"content": {"application/x-tar": {}, "application/zip": {}}},
                       206: {"description": "the requested byte range of the tar"},
                       404: {"description": "unknown job"}, 409: {"description": "the job has not succeeded"},
                       416: {"description": "the range is outside the archive"}})
async def get_outputs(job_id: str, request: Request, store: JobStoreDep, settings: SettingsDep,
                      format: Literal["tar", "zip"] = Query("tar", description="archive format")):
    job = await run_in_threadpool(_get_or_404, store, job_id, _owner(request, settings))
    if job["state"] != "succeeded":
        raise APIError(409, "outputs_not_ready", f"outputs can be downloaded once the job succeeds; the job is {job['state']}")
    # The folder is found from the id, never from a path read back from Redis.
    root = settings.jobs_root_path / job_id
    if not is_job_id(job_id) or not root.is_dir() or root.is_symlink():
        raise APIError(410, "outputs_gone", "the job's output folder is gone")
    mtime = job["finished_at"] or job["created_at"]
    prefix = f"{job_id}/"
    disposition = {"Content-Disposition": f'attachment; filename="{job_id}.{format}"'}
    if format == "zip":
        return StreamingResponse(iter_zip(root, prefix, mtime), media_type="application/zip",
                                 headers={**disposition, "Accept-Ranges": "none"})
    tar = await run_in_threadpool(TarStream, root, prefix, mtime)
    etag = f'"{job_id}-{int(mtime * 1000)}-{tar.length}"'
    headers = {**disposition, "Accept-Ranges": "bytes", "ETag": etag}
    wanted = parse_range(request.headers.get("range"), tar.length)
    if_range = request.headers.get("if-range")
    if if_range is not None and if_range.strip() != etag:
        wanted = None  # the client's partial copy is of another archive: send the whole
    if wanted == "unsatisfiable":
        return Response(status_code=416, headers={"Content-Range": f"bytes */{tar.length}", **headers})
    if wanted is None:
        return StreamingResponse(tar.iter_range(0, tar.length), media_type="application/x-tar",
                                 headers={**headers, "Content-Length": str(tar.length)})
    start, end = wanted
    return StreamingResponse(tar.iter_range(start, end), status_code=206, media_type="application/x-tar",
                             headers={**headers, "Content-Length": str(end - start),
                                      "Content-Range": f"bytes {start}-{end - 1}/{tar.length}"})


DELETE_DESCRIPTION = """
Without `purge`: cancels a queued or running job (chunks not yet started do nothing, running chunks stop between
model batches; outputs already written stay); a finished job answers 409.

With `purge=true`: removes the job for good, whatever its state (an active job is cancelled first): its output
folder `<jobs root>/<job_id>/`, its uploaded input, and its state in Redis; it no longer appears in `GET /v1/jobs`.
Nothing outside those folders is touched (links in them are removed, never followed). Answers
`{"job_id", "purged": true, "state"}`.
"""


@router.delete("/jobs/{job_id}", summary="cancel a job, or purge it", description=DELETE_DESCRIPTION,
               response_model=JobOut | JobPurged,
               responses={404: {"description": "unknown job"}, 409: {"description": "the job already finished"}})
async def cancel_job(job_id: str, request: Request, store: JobStoreDep, settings: SettingsDep,
                     purge: bool = Query(False, description="remove the job's files and state")):
    owner = _owner(request, settings)

    def cancel():
        job = _get_or_404(store, job_id, owner)
        if purge:
            purge_job(store, settings, job_id)
            return JobPurged(job_id=job_id, purged=True, state=job["state"])
        if job["state"] in ("succeeded", "failed"):
            raise APIError(409, "job_finished", f"the job already {job['state']}; purge it with ?purge=true")
        _, state = store.cancel(job_id)
        if state in ("succeeded", "failed"):  # the finalizer was quicker: the job finished, as it says
            raise APIError(409, "job_finished", f"the job already {state}; purge it with ?purge=true")
        if state == "cancelled":
            remove_job_input(settings, job_id)  # (its chunks stop; the input is not needed any more)
        return job_out(store.get(job_id))

    return await run_in_threadpool(cancel)
