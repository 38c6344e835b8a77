"""Shared objects of the API process (settings, models, job store, metrics) and the dependencies that hand them out.

Models are created once per process: at startup (lifespan) or, when that failed, on the next request that needs
them (so weights installed after start are picked up without a restart).
"""
from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from typing import Annotated, Any

from fastapi import Depends, Request
from starlette.concurrency import run_in_threadpool

from lrface.core.embedder import EMBEDDER_MODELS
from lrface.service.api.errors import APIError
from lrface.service.api.metrics import Metrics
from lrface.service.jobs.store import JobStore, redis_client
from lrface.service.settings import Settings

log = logging.getLogger("lrface.api")

MODEL_NAMES = ("synthesizer", "embedder", "detector")  # loaded at startup and checked by /readyz
# An embedder's key in Services.models is its file stem (lrface.core.embedder.EMBEDDER_MODELS: full -> "embedder",
# lite -> "embedder_lite"); the lite one is loaded on the first request that names it.


@dataclass
class Services:
    settings: Settings
    metrics: Metrics
    limiter: Any = None  # lrface.service.api.limits.InferenceLimiter: the compute gate of the inference endpoints
    in_flight: Any = None  # lrface.service.api.limits.InFlight: inference requests admitted and not yet answered
    models: dict[str, Any] = field(default_factory=dict)
    model_errors: dict[str, str] = field(default_factory=dict)
    _store: JobStore | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def _build(self, name: str):
        s = self.settings
        if name == "detector":
            from lrface.core.detect import FaceDetector

            return FaceDetector(providers=s.onnx_providers(), threads=s.threads)
        from lrface.core.embedder import Embedder
        from lrface.core.synthesizer import Synthesizer

        def on_batch(rows: int, requests: int, seconds: float) -> None:
            self.metrics.batch_rows.labels(name).observe(rows)
            self.metrics.batch_requests.labels(name).observe(requests)

        batching = dict(micro_batch=s.micro_batch, batch_wait_ms=s.batch_wait_ms, batch_queue_size=s.batch_queue_size,
                        batch_queue_timeout=s.inference_queue_timeout, on_batch=on_batch, spinning=s.ort_spinning)
        if name == "synthesizer":
            return Synthesizer(s.mrgan_model_path, providers=s.onnx_providers(), threads=s.threads,
                               max_batch=s.synth_max_batch, **batching)
        model = next(m for m, stem in EMBEDDER_MODELS.items() if stem == name)
        return Embedder(s.embedder_source(model), providers=s.onnx_providers(), threads=s.threads, max_batch=s.embed_max_batch, **batching)

    def model(self, name: str):
        """The loaded model, loading it now if needed; None (with the reason in `model_errors`) if it cannot be."""
        obj = self.models.get(name)
        if obj is not None:
            return obj
        with self._lock:
            if name not in self.models:
                try:
                    self.models[name] = self._build(name)
                    self.model_errors.pop(name, None)
                    self.metrics.model_loaded.labels(name).set(1)
                except Exception as exc:  # missing weights, bad sidecar, provider trouble: reported, not fatal
                    self.model_errors[name] = f"{type(exc).__name__}: {exc}"
                    log.warning("cannot load %s: %s", name, exc)
                    return None
            return self.models[name]

    def load_all(self) -> None:
        for name in MODEL_NAMES:
            self.model(name)

    def close_models(self) -> None:
        """Stop the models' micro-batchers, each after finishing the requests queued in it."""
        with self._lock:
            models = [(name, self.models.pop(name)) for name in list(self.models) if name != "detector"]
        for name, model in models:  # (loaded again on the next request, should one still come)
            self.metrics.model_loaded.labels(name).set(0)
            close = getattr(model, "close", None)
            if close is not None:
                close()

    @property
    def store(self) -> JobStore | None:
        if self._store is None and self.settings.job_state_url:
            self._store = JobStore.from_settings(self.settings)
        return self._store

    def broker_reachable(self) -> tuple[bool, str]:
        url = self.settings.broker_url
        if not url:
            return False, "no broker configured (set LRFACE_BROKER_URL, or run `lrface serve`, which starts one)"
        try:
            client = redis_client(url, timeout=2.0)
            client.ping()
            client.close()
            return True, "ok"
        except Exception as exc:
            return False, f"{type(exc).__name__}: {exc}"


# The dependencies are `async def`: FastAPI runs a plain `def` dependency in the thread pool, a hop per dependency
# per request that costs more than what they do. Only loading a model (when startup did not) goes to the pool.

async def get_services(request: Request) -> Services:
    return request.app.state.services


ServicesDep = Annotated[Services, Depends(get_services)]


async def get_settings_dep(services: ServicesDep) -> Settings:
    return services.settings


async def loaded_model(services: Services, name: str, what: str):
    """The model, loading it in the thread pool if startup did not; 503 `model_unavailable` when it cannot be."""
    obj = services.models.get(name)
    if obj is None:
        obj = await run_in_threadpool(services.model, name)
    if obj is None:
        raise APIError(503, "model_unavailable", f"the {what} is not available: {services.model_errors.get(name, 'not loaded')}")
    return obj


def _model_dependency(name: str, what: str):
    async def dependency(services: ServicesDep):
        return await loaded_model(services, name, what)

    dependency.__name__ = f"get_{name}"
    return dependency


get_synthesizer = _model_dependency("synthesizer", "MR-GAN synthesizer")
get_detector = _model_dependency("detector", "face detector")


async def named_embedder(services: Services, model: str):
    """The embedder a request names (`model=`: full or lite), loading it if needed; 503 when it cannot be."""
    what = "face embedder" if model == "full" else f"{model} face embedder"
    return await loaded_model(services, EMBEDDER_MODELS[model], what)


async def get_job_store(services: ServicesDep) -> JobStore:
    store = services.store
    if store is None:
        raise APIError(503, "jobs_unavailable", "bulk jobs need a broker: set LRFACE_BROKER_URL or run `lrface serve`")
    return store


SettingsDep = Annotated[Settings, Depends(get_settings_dep)]
JobStoreDep = Annotated[JobStore, Depends(get_job_store)]
