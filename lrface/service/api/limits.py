"""Backpressure of the inference endpoints and request-body timeouts (see the settings of the same names).

Two gates keep an API process's memory and CPU bounded however many clients push at it:

- admission (`AdmissionMiddleware`, before any body is read): at most `inference_concurrency +
  inference_queue_size` inference requests are in the process; the next one gets 503 `overloaded` with
  `Retry-After` at once. A request it lets in must deliver its whole body within `body_timeout` seconds (and no
  request body may pause longer than `body_idle_timeout`), else 408 `request_timeout`, so slow senders cannot
  hold places for ever.
- compute (`InferenceLimiter`, around decoding and the model runs): at most `inference_concurrency` requests
  compute at once; one that waits longer than `inference_queue_timeout` for its turn gets 503 `overloaded`.
"""
from __future__ import annotations

import asyncio
from contextlib import asynccontextmanager

from fastapi import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from lrface.service.api.errors import APIError, error_response
from lrface.service.settings import Settings

INFERENCE_PATHS = frozenset({"/v1/synthesize", "/v1/embed", "/v1/verify"})


class BodyTimeout(HTTPException):
    def __init__(self, message: str):
        super().__init__(408, message, headers={"Connection": "close"})


def overloaded(settings: Settings, message: str) -> APIError:
    return APIError(503, "overloaded", message, headers={"Retry-After": str(settings.retry_after_s)})


async def run_batched(services, awaitable):
    """Await a model call queued in a micro-batcher; its refusals (queue full, waited too long, shutting down)
    become 503 `overloaded` with Retry-After, like the other gates'."""
    from lrface.core.batching import Overloaded

    try:
        return await awaitable
    except Overloaded as exc:
        services.metrics.shed.labels("batch_queue").inc()
        raise overloaded(services.settings, f"the server is busy: {exc}; try again later") from None


class InferenceLimiter:
    """At most `inference_concurrency` holders at once; waiting longer than `inference_queue_timeout` -> 503."""

    def __init__(self, settings: Settings, on_shed=None):
        self.settings = settings
        self.concurrency = settings.inference_concurrency
        self.timeout = settings.inference_queue_timeout
        self.active = 0
        self.waiting = 0
        self._on_shed = on_shed
        self._semaphore: asyncio.Semaphore | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def _get_semaphore(self) -> asyncio.Semaphore:
        loop = asyncio.get_running_loop()
        if self._semaphore is None or self._loop is not loop:  # (a new event loop: in-process test clients)
            self._semaphore, self._loop = asyncio.Semaphore(self.concurrency), loop
        return self._semaphore

    @asynccontextmanager
    async def slot(self):
        semaphore = self._get_semaphore()
        self.waiting += 1
        try:
            await asyncio.wait_for(semaphore.acquire(), self.timeout)
        except asyncio.TimeoutError:
            if self._on_shed:
                self._on_shed("queue_timeout")
            raise overloaded(self.settings, f"the server is busy: no inference slot became free within "
                                            f"{self.timeout:g} s; try again later") from None
        finally:
            self.waiting -= 1
        self.active += 1
        try:
            yield
        finally:
            self.active -= 1
            semaphore.release()


class InFlight:
    """The inference requests admitted in this API process and not yet answered (`n`), counted by
    `AdmissionMiddleware`; the embed path reads it to tell a lone request."""

    def __init__(self):
        self.n = 0


class AdmissionMiddleware:
    """Bounded number of inference requests in the process; deadlines on reading request bodies."""

    def __init__(self, app: ASGIApp, settings: Settings, on_shed=None, in_flight_gauge=None,
                 counter: InFlight | None = None):
        self.app = app
        self.settings = settings
        self.max_in_flight = settings.inference_concurrency + settings.inference_queue_size
        self.counter = counter if counter is not None else InFlight()
        self._on_shed = on_shed
        self._gauge = in_flight_gauge

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        settings = self.settings
        inference = scope.get("path", "").rstrip("/") in INFERENCE_PATHS
        loop = asyncio.get_running_loop()
        deadline = loop.time() + settings.body_timeout if inference else None
        body_done = False

        async def timed_receive() -> Message:
            nonlocal body_done
            if body_done:  # afterwards receive() only waits for the disconnect: no deadline on that
                return await receive()
            timeout = settings.body_idle_timeout
            if deadline is not None:
                timeout = min(timeout, deadline - loop.time())
            if timeout <= 0:
                raise BodyTimeout(f"the request body did not arrive within {settings.body_timeout:g} s")
            try:
                message = await asyncio.wait_for(receive(), timeout)
            except asyncio.TimeoutError:
                if deadline is not None and loop.time() >= deadline - 1e-3:
                    raise BodyTimeout(f"the request body did not arrive within {settings.body_timeout:g} s") from None
                raise BodyTimeout(f"the request body stalled for more than {settings.body_idle_timeout:g} s") from None
            if message["type"] != "http.request" or not message.get("more_body", False):
                body_done = True
            return message

        if not inference:
            await self.app(scope, timed_receive, send)
            return
        counter = self.counter
        if counter.n >= self.max_in_flight:
            if self._on_shed:
                self._on_shed("admission")
            response = error_response(
                503, "overloaded", f"the server is busy ({counter.n} inference requests in progress); try again later",
                headers={"Retry-After": str(settings.retry_after_s), "Connection": "close"})
            await response(scope, receive, send)
            return
        counter.n += 1
        if self._gauge is not None:
            self._gauge.inc()
        try:
            await self.app(scope, timed_receive, send)
        finally:
            counter.n -= 1
            if self._gauge is not None:
                self._gauge.dec()
