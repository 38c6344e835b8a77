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

from service.api.errors import APIError
from service.api.metrics import Metrics
from service.jobs import JobStore, redis_client
from service.settings import Settings

log = logging.getLogger("lrface.api")

MODEL_NAMES = ("synthesizer", "embedder", "detector")


@dataclass
class Services:
    settings: Settings
    metrics: Metrics
    limiter: Any = None  # service.api.limits.InferenceLimiter: the compute gate of the inference endpoints
    models: dict[str, Any] = field(default_factory=dict)
    model_errors: dict[str, str] = field(default_factory=dict)
    _store: JobStore | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def _build(self, name: str):
        s = self.settings
        if name == "detector":
            from service.detect import FaceDetector

            return FaceDetector(providers=s.onnx_providers(), threads=s.threads)
        from service.inference import Embedder, Synthesizer

        if name == "synthesizer":
            return Synthesizer(s.mrgan_model_path, providers=s.onnx_providers(), threads=s.threads, max_batch=s.synth_max_batch)
        return Embedder(s.embedder_model_path, providers=s.onnx_providers(), threads=s.threads, max_batch=s.embed_max_batch)

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


def get_services(request: Request) -> Services:
    return request.app.state.services


ServicesDep = Annotated[Services, Depends(get_services)]


def get_settings_dep(services: ServicesDep) -> Settings:
    return services.settings


def _model_dependency(name: str, what: str):
    def dependency(services: ServicesDep):
        obj = services.model(name)
        if obj is None:
            raise APIError(503, "model_unavailable", f"the {what} is not available: {services.model_errors.get(name, 'not loaded')}")
        return obj

    dependency.__name__ = f"get_{name}"
    return dependency


get_synthesizer = _model_dependency("synthesizer", "MR-GAN synthesizer")
get_embedder = _model_dependency("embedder", "face embedder")
get_detector = _model_dependency("detector", "face detector")


def get_job_store(services: ServicesDep) -> JobStore:
    store = services.store
    if store is None:
        raise APIError(503, "jobs_unavailable", "bulk jobs need a broker: set LRFACE_BROKER_URL or run `lrface serve`")
    return store


SettingsDep = Annotated[Settings, Depends(get_settings_dep)]
JobStoreDep = Annotated[JobStore, Depends(get_job_store)]
