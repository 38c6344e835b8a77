"""The FastAPI application: `create_app()` wires settings, models, routes, errors, limits, auth and metrics."""
from __future__ import annotations

import gc
import logging
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi_offline import FastAPIOffline
from starlette.concurrency import run_in_threadpool

from lrface.service.api.access import RequestContextMiddleware
from lrface.service.api.deps import Services
from lrface.service.api.errors import install_error_handlers
from lrface.service.api.guard import DOCS_ASSETS_PREFIX, OPEN_PATHS, GuardMiddleware
from lrface.service.api.limits import AdmissionMiddleware, InferenceLimiter, InFlight
from lrface.service.api.metrics import Metrics, MetricsMiddleware
from lrface.service.api.refusals import DrainBeforeRefusalMiddleware
from lrface.service.api.uploads import UploadGateMiddleware
from lrface.service.api.routes import demo, embed, health, jobs, synthesize
from lrface.service.settings import Settings, get_settings

DESCRIPTION = """
Face models for low-resolution CCTV imagery.

- **Synthesis** (`/v1/synthesize`): realistic LR variants of an HR face (MR-GAN), for augmenting training sets.
- **Recognition** (`/v1/embed`, `/v1/verify`): embeddings that bring a sharp photo and a 20-px capture of the same
  person together.
- **Bulk jobs** (`/v1/jobs`): the synthesis (or the embedding) of every face of a folder, RecordIO dataset or
  archive, by Celery workers; listed, watched per image, downloaded as one archive, cancelled and purged.

Every error is JSON `{"error": code, "message": text}`. When API keys are configured (`LRFACE_API_KEYS`), every
endpoint except `/healthz`, `/readyz` and the docs needs `Authorization: Bearer <key>`.

Under load the service sheds work instead of queueing without bound: 503 `overloaded` (inference endpoints) and
429 `too_many_jobs` (`POST /v1/jobs`) come with a `Retry-After` header. Every response carries an `X-Request-ID`
(the client's, when it sends a sane one), which the server's log lines of that request carry too.
"""


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    logging.getLogger("lrface").setLevel(settings.log_level.upper())
    metrics = Metrics()

    def shed(reason: str) -> None:
        metrics.shed.labels(reason).inc()

    services = Services(settings=settings, metrics=metrics, limiter=InferenceLimiter(settings, on_shed=shed),
                        in_flight=InFlight())

    def job_stats():
        store = services.store
        return store.stats() if store is not None else None

    metrics.watch_jobs(job_stats)
    metrics.watch_job_progress(lambda: services.store)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        if settings.load_models_on_startup:
            await run_in_threadpool(services.load_all)
        await run_in_threadpool(_clean_orphan_uploads, services)
        # What start-up made (modules, app, models) lives as long as the process: out of the collector's sight,
        # a full collection takes well under a millisecond instead of ~80 ms, a pause a request would wait out.
        gc.collect()
        gc.freeze()
        yield
        # uvicorn has answered the requests in flight by now; the batchers finish whatever is still queued.
        await run_in_threadpool(services.close_models)
        store = services._store
        if store is not None:
            store.redis.close()

    # /docs and /redoc with Swagger UI's and ReDoc's files served by the app itself (from the fastapi-offline
    # wheel): they render on a closed network. The validator badge would call a public service: off.
    app: FastAPI = FastAPIOffline(title="lrface", version="0.1.0", description=DESCRIPTION, lifespan=lifespan,
                                  static_url=DOCS_ASSETS_PREFIX, swagger_ui_parameters={"validatorUrl": None})
    app.state.services = services
    if settings.api_keys:
        _document_api_keys(app)
    install_error_handlers(app)
    for module in (synthesize, embed, jobs, health):
        app.include_router(module.router)
    app.include_router(demo.router)
    app.mount(demo.DEMO_PREFIX, demo.demo_assets(), name="demo")
    # Added innermost first. From the outside in: request id + access log, metrics (they see every request, also
    # refused ones), CORS (when configured), the guard (API key, body size) and admission (backpressure, body
    # timeouts), both before any body is read.
    app.add_middleware(UploadGateMiddleware, settings=settings, on_shed=shed)
    app.add_middleware(AdmissionMiddleware, settings=settings, on_shed=shed, in_flight_gauge=metrics.in_flight,
                       counter=services.in_flight)
    app.add_middleware(GuardMiddleware, settings=settings)
    if settings.cors_origins:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=settings.cors_origins, allow_methods=["*"],
                           allow_headers=["Authorization", "Content-Type"])
    # Refusals (413 / 429 / 503) from any layer inside: the unread body is drained first, so clients receive them.
    app.add_middleware(DrainBeforeRefusalMiddleware, max_bytes=settings.refusal_drain_bytes,
                       timeout=settings.refusal_drain_timeout)
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    app.add_middleware(RequestContextMiddleware)
    return app


def _clean_orphan_uploads(services: Services) -> None:
    """Upload folders left by a crash (or of jobs that finished) go at start; see `clean_orphan_uploads`."""
    from lrface.service.jobs.lifecycle import clean_orphan_uploads
    from lrface.service.tasks import orphan_upload_age

    try:
        store = services.store
        if store is not None:
            clean_orphan_uploads(store, services.settings, min_age_s=orphan_upload_age(services.settings))
    except Exception as exc:  # Redis not there yet and the like: the workers' sweeper does it later
        logging.getLogger("lrface.api").warning("cleaning the uploads folder failed: %s: %s", type(exc).__name__, exc)


def _document_api_keys(app: FastAPI) -> None:
    """With API keys on, the OpenAPI document says which operations need one, so /docs has an Authorize button
    and its "Try it out" sends the key."""
    build = app.openapi

    def openapi() -> dict:
        if app.openapi_schema:
            return app.openapi_schema
        schema = build()
        schema.setdefault("components", {}).setdefault("securitySchemes", {})["apiKey"] = {
            "type": "http", "scheme": "bearer", "description": "one of the server's LRFACE_API_KEYS"}
        for path, item in schema["paths"].items():
            if path not in OPEN_PATHS:
                for operation in item.values():
                    operation["security"] = [{"apiKey": []}]
        return schema

    app.openapi = openapi
