"""The outermost middleware: a request id for every request (X-Request-ID in and out) and one access log line.

The id is set in `lrface.service.logs.request_id_var`, so every log line written while serving the request (also from
the thread pool, which copies the context) carries it. The access line has method, route path, status and
duration, never headers, the query string or bodies (API keys and uploads stay out of the logs).
"""
from __future__ import annotations

import logging
import time

from starlette.datastructures import Headers, MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from lrface.service.logs import request_id_var, sanitize_request_id

access_log = logging.getLogger("lrface.access")

QUIET_PATHS = ("/healthz", "/readyz", "/metrics")  # probes and scrapes: logged at debug level only


class RequestContextMiddleware:
    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = sanitize_request_id(Headers(scope=scope).get("x-request-id"))
        # Each request runs in its own task (own context), so the id is not reset afterwards: the error handler
        # of an unhandled exception, which runs outside this middleware, still logs with it.
        request_id_var.set(request_id)
        scope.setdefault("state", {})["request_id"] = request_id
        start = time.perf_counter()
        status = {"code": 500}

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
                MutableHeaders(scope=message)["X-Request-ID"] = request_id
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            path = scope.get("path", "")
            route = getattr(scope.get("route"), "path", None)
            level = logging.DEBUG if path in QUIET_PATHS and status["code"] < 400 else logging.INFO
            duration_ms = round((time.perf_counter() - start) * 1000, 1)
            client = scope.get("client")
            access_log.log(level, "%s %s %s %.1f ms", scope.get("method", ""), path, status["code"], duration_ms,
                           extra={"method": scope.get("method", ""), "path": path, "route": route,
                                  "status": status["code"], "duration_ms": duration_ms,
                                  "client": client[0] if client else None})
