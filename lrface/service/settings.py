"""The one settings object of the service (API, workers, `lrface serve`), read from `LRFACE_*` environment variables."""
from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


def _split_list(value):
    # Lists come from the environment as "a,b,c" or as a JSON array.
    if value is None:
        return []
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            import json

            return [str(v).strip() for v in json.loads(text) if str(v).strip()]
        return [part.strip() for part in text.split(",") if part.strip()]
    return [str(v).strip() for v in value if str(v).strip()]


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="LRFACE_", extra="ignore", case_sensitive=False)

    # --- models -------------------------------------------------------------------------------------
    mrgan_model_path: Path | None = Field(None, description="MR-GAN ONNX; None -> lrface/models/weights/mrgan.onnx")
    embedder_model_path: Path | None = Field(None, description="embedder ONNX; None -> lrface/models/weights/embedder.onnx")
    embedder_lite_model_path: Path | None = Field(
        None, description="the lite embedder's ONNX (`model=lite`); None -> lrface/models/weights/embedder_lite.onnx. "
        "Loaded on the first request or job that names it")
    providers: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["auto"],
        description="'auto' (CUDA when available, else CPU), 'cpu', 'cuda', or onnxruntime provider names in order",
    )
    threads: int | None = Field(None, ge=1, description="intra-op threads per ONNX session (None = onnxruntime default)")
    synth_max_batch: int = Field(32, ge=1)
    embed_max_batch: int = Field(64, ge=1)
    load_models_on_startup: bool = True

    # --- broker and job state ---------------------------------------------------------------------
    broker_url: str | None = Field(None, description="Celery broker (Redis); None -> `lrface serve` starts an embedded one")
    redis_url: str | None = Field(None, description="Redis for job state; None -> the broker URL")
    key_prefix: str = Field("lrface:", description="prefix of every job-state key in Redis")
    queue: str = Field("lrface", description="Celery queue of the bulk-job tasks")
    broker_visibility_timeout: int = Field(
        3600, ge=1, description="seconds before a task taken by a worker that died is handed to another worker"
    )
    chunk_size: int = Field(64, ge=1, description="source images per bulk-job task")
    chunk_max_retries: int = Field(2, ge=0)
    job_stall_timeout: float = Field(
        300.0, gt=0, description="a queued or running job without progress for this long is checked for chunk tasks "
        "the broker lost (a worker killed just after taking a task off the Redis queue loses it); missing ones are "
        "queued again by the workers' sweeper",
    )
    job_retention_s: float = Field(
        0.0, ge=0, description="finished jobs (their output folder, uploaded input and state) are purged this many "
        "seconds after they finished, by the workers' sweeper; 0 keeps them until DELETE /v1/jobs/{id}?purge=true",
    )

    # --- file system --------------------------------------------------------------------------------
    state_dir: Path = Field(
        default_factory=lambda: Path(os.environ.get("XDG_CACHE_HOME", str(Path.home() / ".cache"))) / "lrface",
        description="embedded Redis data and socket",
    )
    data_root: Path | None = Field(None, description="jobs may only read input folders under this root; None -> STATE_DIR/data")
    jobs_root: Path | None = Field(None, description="job outputs go to JOBS_ROOT/<job_id>/; None -> STATE_DIR/jobs")
    uploads_root: Path | None = Field(None, description="uploaded job archives are extracted here; None -> JOBS_ROOT/_uploads")

    # --- limits -------------------------------------------------------------------------------------
    max_upload_bytes: int = Field(10 * 1024 * 1024, ge=1, description="per uploaded image file")
    max_image_pixels: int = Field(40_000_000, ge=1, description="width x height of a decoded image")
    max_request_pixels: int = Field(
        100_000_000, ge=1, description="width x height of all images of one /v1/embed or /v1/verify request together "
        "(from their headers, before decoding); more: 413 too_many_pixels. Images are decoded one at a time")
    max_variants: int = Field(64, ge=1)
    max_embed_images: int = Field(32, ge=1, description="images per /v1/embed request")
    max_archive_bytes: int = Field(512 * 1024 * 1024, ge=1, description="uploaded job archive, compressed")
    max_archive_members: int = Field(10_000, ge=1)
    max_archive_total_bytes: int = Field(2 * 1024 * 1024 * 1024, ge=1, description="sum of uncompressed member sizes")
    max_archive_header_bytes: int = Field(
        16 * 1024 * 1024, ge=512, description="all tar headers of an archive together (512 bytes per header, plus "
        "PAX headers and GNU long names / links, each of which may be at most 64 KiB), counted before each is read")
    max_archive_ratio: float = Field(100.0, gt=0, description="uncompressed / compressed size, whole archive and each member")

    max_json_body_bytes: int = Field(64 * 1024, ge=1, description="JSON body of POST /v1/jobs (a job spec is small)")

    # --- backpressure and timeouts (per API process) -------------------------------------------------
    # Inference requests (/v1/synthesize, /v1/embed, /v1/verify) pass two gates. Admission: at most
    # inference_concurrency + inference_queue_size of them are in the process at once (reading their bodies or
    # waiting); one more is answered 503 `overloaded` with Retry-After at once, before its body is read, so memory
    # stays bounded whatever the load. Compute: at most inference_concurrency of them decode and run the models
    # at once; one that waits longer than inference_queue_timeout for its turn is answered 503 `overloaded`.
    inference_concurrency: int = Field(4, ge=1, description="inference requests computing at once per API process")
    inference_queue_size: int = Field(32, ge=0, description="further inference requests that may wait for a turn")
    inference_queue_timeout: float = Field(30.0, gt=0, description="seconds a request may wait for its turn, then 503")
    # Micro-batching: one batcher per model (a bounded queue and one worker thread) runs the rows of concurrent
    # inference requests as one onnxruntime call of up to synth_max_batch / embed_max_batch rows. The compute
    # gate above then covers decoding and encoding only; a request waits for the model in its batcher's queue
    # (at most batch_queue_size requests per model, then 503 `overloaded`; a request still queued after
    # inference_queue_timeout seconds gets 503 too).
    micro_batch: bool = Field(True, description="on: concurrent requests share model calls; off: one call per request")
    batch_wait_ms: float = Field(
        0.0, ge=0, le=1000, description="how long a batch that is not full waits for more rows (0: it takes what is "
        "queued when the previous call ends, so a lone request never waits)")
    batch_queue_size: int = Field(64, ge=1, description="requests waiting in one model's batcher; one more gets 503")
    inline_lone_requests: bool = Field(
        True, description="a lone /v1/embed (up to 4 faces) or /v1/verify request (no other inference request in the "
        "API process, the embedder idle) runs its model call on the event loop's thread instead of through the "
        "batcher's queue: no thread hand-offs, lower latency at low load; under concurrency requests are batched")
    ort_spinning: bool = Field(
        False, description="let the API's idle onnxruntime threads spin between calls (onnxruntime's default): a "
        "little lower latency on an idle machine, but the spinning takes CPU from decoding and HTTP under load")
    worker_ort_spinning: bool = Field(
        True, description="the same for the bulk workers' MR-GAN: they run model call after model call with little "
        "in between, and spinning threads pick up each call's parallel sections sooner (about 8% more variants/s "
        "with 2 threads, as `lrface augment` gets by onnxruntime's default)")
    body_timeout: float = Field(
        60.0, gt=0, description="seconds an inference request's whole body may take to arrive, then 408 request_timeout"
    )
    body_idle_timeout: float = Field(
        30.0, gt=0, description="longest pause between two parts of any request body (also archive uploads), then 408"
    )
    upload_timeout: float = Field(
        900.0, gt=0, description="seconds an archive upload (POST /v1/jobs, multipart) may take as a whole, then 408")
    max_concurrent_uploads: int = Field(
        4, ge=1, description="archive uploads in progress at once per API process; one more: 503 overloaded")
    max_header_bytes: int = Field(
        32 * 1024, ge=1024, description="request line + headers of one request; more: 431 and the connection closed")
    header_timeout: float = Field(
        10.0, gt=0, description="seconds a request's line and headers may take to arrive; then 408 and the connection "
        "closed (also a connection that sends nothing)")
    max_active_jobs: int = Field(
        100, ge=1, description="queued + running bulk jobs (all API processes sharing the Redis); more: 429 too_many_jobs"
    )
    refusal_drain_bytes: int = Field(
        64 * 1024 * 1024, ge=0, description="a 413 / 429 / 503 answered before the request body was read first reads "
        "and discards up to this many more body bytes, so the client receives the answer (and its Retry-After) "
        "instead of a connection reset; a larger body is answered with Connection: close")
    refusal_drain_timeout: float = Field(
        10.0, gt=0, description="seconds that draining may take, then the refusal goes out with Connection: close")
    retry_after_s: int = Field(2, ge=1, description="Retry-After (seconds) sent with 503 overloaded / unavailable")
    jobs_retry_after_s: int = Field(30, ge=1, description="Retry-After (seconds) sent with 429 too_many_jobs")

    # --- HTTP ---------------------------------------------------------------------------------------
    api_keys: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="accepted bearer tokens (comma-separated); empty = authentication off"
    )
    cors_origins: Annotated[list[str], NoDecode] = Field(default_factory=list, description="empty = CORS off")
    log_level: Literal["debug", "info", "warning", "error", "critical"] = "info"
    log_format: Literal["json", "text"] = Field(
        "json", description="json: one JSON object per line with a request_id (X-Request-ID) on every line; text: plain"
    )

    @field_validator("providers", "api_keys", "cors_origins", mode="before")
    @classmethod
    def _lists(cls, value):
        return _split_list(value)

    @field_validator("log_level", "log_format", mode="before")
    @classmethod
    def _lower(cls, value):
        return value.lower() if isinstance(value, str) else value

    @field_validator("broker_url", "redis_url", mode="before")
    @classmethod
    def _empty_is_none(cls, value):
        return None if isinstance(value, str) and not value.strip() else value

    # Resolved paths: every caller uses these, never the raw optional fields.
    @property
    def data_root_path(self) -> Path:
        return (self.data_root or self.state_dir / "data").expanduser().resolve()

    @property
    def jobs_root_path(self) -> Path:
        return (self.jobs_root or self.state_dir / "jobs").expanduser().resolve()

    @property
    def uploads_root_path(self) -> Path:
        return (self.uploads_root or self.jobs_root_path / "_uploads").expanduser().resolve()

    @property
    def job_state_url(self) -> str | None:
        return self.redis_url or self.broker_url

    def embedder_source(self, model: str) -> Path | str:
        """What `Embedder` loads for a shipped embedder's name (full, lite): its `<file stem>_model_path` setting
        (`EMBEDDER_MODELS`: embedder_model_path, embedder_lite_model_path) when set, else the name itself (the
        shipped file)."""
        from lrface.core.embedder import EMBEDDER_MODELS

        return getattr(self, f"{EMBEDDER_MODELS[model]}_model_path") or model

    def onnx_providers(self) -> list[str]:
        """Providers for onnxruntime: "auto" / "cpu" / "cuda" as `lrface --device` means them, or explicit names."""
        from lrface.core.onnx_model import execution_providers

        names = [p for p in self.providers if p] or ["auto"]
        if len(names) == 1 and names[0].lower() in ("auto", "cpu", "cuda"):
            return execution_providers(names[0].lower())
        return names


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
