"""GET /healthz (the process answers), /readyz (models loaded, broker reachable), /metrics (Prometheus)."""
from __future__ import annotations

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool

from lrface.service.api.deps import MODEL_NAMES, ServicesDep

router = APIRouter(tags=["health"])


class Health(BaseModel):
    status: str


class Check(BaseModel):
    ok: bool
    detail: str


class Readiness(BaseModel):
    ready: bool
    checks: dict[str, Check]


@router.get("/healthz", response_model=Health, summary="liveness: the process answers")
async def healthz() -> Health:
    return Health(status="ok")


@router.get("/readyz", response_model=Readiness, summary="readiness: models loaded and broker reachable",
            responses={503: {"description": "not ready; `checks` says why"}})
async def readyz(services: ServicesDep):
    def probe() -> dict[str, Check]:
        checks = {}
        for name in MODEL_NAMES:
            model = services.model(name)
            detail = getattr(model, "model_id", "loaded") if model is not None else services.model_errors.get(name, "not loaded")
            checks[name] = Check(ok=model is not None, detail=str(detail))
        ok, detail = services.broker_reachable()
        checks["broker"] = Check(ok=ok, detail=detail)
        return checks

    checks = await run_in_threadpool(probe)
    ready = all(c.ok for c in checks.values())
    body = Readiness(ready=ready, checks=checks).model_dump()
    if ready:
        return JSONResponse(body)
    failing = ", ".join(name for name, c in checks.items() if not c.ok)
    return JSONResponse({"error": "not_ready", "message": f"not ready: {failing}", **body}, status_code=503)


@router.get("/metrics", summary="Prometheus metrics", response_class=Response)
async def metrics(services: ServicesDep) -> Response:
    data = await run_in_threadpool(generate_latest, services.metrics.registry)
    return Response(content=data, media_type=CONTENT_TYPE_LATEST)
