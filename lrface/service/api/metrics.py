"""Prometheus metrics of one API process: requests, latency, images processed, model state, job counts."""
from __future__ import annotations

import time
from typing import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily
from starlette.types import ASGIApp, Message, Receive, Scope, Send


class _JobCountCollector:
    """Job events counted in Redis (by the API and every worker), read at scrape time."""

    def __init__(self, read_stats: Callable[[], dict[str, int] | None]):
        self._read_stats = read_stats

    def collect(self):
        family = CounterMetricFamily("lrface_jobs", "bulk jobs by event (all processes sharing the Redis)", labels=["event"])
        try:
            stats = self._read_stats()
        except Exception:
            stats = None
        for event, value in (stats or {}).items():
            family.add_metric([event], value)
        yield family


class Metrics:
    def __init__(self):
        # A registry per app, so several apps in one process (tests) do not collide.
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter("lrface_http_requests", "HTTP requests", ["method", "route", "status"], registry=self.registry)
        self.latency = Histogram(
            "lrface_http_request_duration_seconds", "HTTP request latency", ["method", "route"], registry=self.registry,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
        )
        self.images = Counter("lrface_images_processed", "input images processed", ["endpoint"], registry=self.registry)
        self.variants = Counter("lrface_variants_generated", "LR variants returned by /v1/synthesize", registry=self.registry)
        self.jobs_submitted = Counter("lrface_jobs_submitted", "bulk jobs accepted by this process", registry=self.registry)
        self.shed = Counter("lrface_requests_shed", "requests refused by backpressure (503 overloaded)", ["reason"],
                            registry=self.registry)
        self.batch_rows = Histogram("lrface_model_batch_rows", "rows per model call of the micro-batcher", ["model"],
                                    registry=self.registry, buckets=(1, 2, 4, 8, 16, 32, 64, 128))
        self.batch_requests = Histogram("lrface_model_batch_requests", "requests per model call of the micro-batcher",
                                        ["model"], registry=self.registry, buckets=(1, 2, 4, 8, 16, 32, 64))
        self.in_flight = Gauge("lrface_inference_requests_in_flight",
                               "inference requests admitted and not yet answered (see LRFACE_INFERENCE_QUEUE_SIZE)",
                               registry=self.registry)
        self.model_loaded = Gauge("lrface_model_loaded", "1 when the model is loaded", ["model"], registry=self.registry)

    def watch_jobs(self, read_stats: Callable[[], dict[str, int] | None]) -> None:
        self.registry.register(_JobCountCollector(read_stats))

    def watch_job_progress(self, read_store: Callable[[], object | None]) -> None:
        self.registry.register(_JobProgressCollector(read_store))


class _JobProgressCollector:
    """Images processed by the bulk jobs' workers and job durations, kept in Redis by every worker, read at
    scrape time (so every API process reports the same totals)."""

    def __init__(self, read_store: Callable[[], object | None]):
        self._read_store = read_store

    def collect(self):
        images = CounterMetricFamily("lrface_job_images_processed", "images processed by bulk jobs (all workers)",
                                     labels=["kind", "status"])
        durations = HistogramMetricFamily("lrface_job_duration_seconds",
                                          "bulk jobs from submission to their end, by final state", labels=["state"])
        try:
            store = self._read_store()
            image_stats = store.image_stats() if store is not None else {}
            duration_stats = store.duration_stats() if store is not None else {}
        except Exception:
            image_stats, duration_stats = {}, {}
        for (kind, status), value in sorted(image_stats.items()):
            images.add_metric([kind, status], value)
        for state, entry in sorted(duration_stats.items()):
            buckets = [(_bound(b), n) for b, n in sorted(entry["buckets"].items())] + [("+Inf", entry["count"])]
            durations.add_metric([state], buckets, entry["sum"])
        yield images
        yield durations


def _bound(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


class MetricsMiddleware:
    """Counts and times every HTTP request by route template (never the raw path: ids would explode the labels)."""

    def __init__(self, app: ASGIApp, metrics: Metrics):
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = {"code": 500}

        async def send_wrapper(message: Message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            route = scope.get("route")
            label = getattr(route, "path", None) or "unmatched"
            method = scope.get("method", "")
            self.metrics.requests.labels(method, label, str(status["code"])).inc()
            self.metrics.latency.labels(method, label).observe(time.perf_counter() - start)
