"""Archive uploads (`POST /v1/jobs` as multipart/form-data): a cap on how many are received at once per API
process and a limit on the time each may take as a whole.

- `max_concurrent_uploads`: uploads in progress (received, extracted, submitted); one more is answered 503 `overloaded` with `Retry-After` before its body is
  read (the refusal middleware drains what it can, so the client receives it).
- `upload_timeout`: the whole upload must arrive within this many seconds, else 408 `request_timeout` (the body
  idle timeout, `body_idle_timeout`, still applies to every pause).
"""
from __future__ import annotations

import asyncio

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from lrface.service.api.errors import error_response
from lrface.service.api.limits import BodyTimeout
from lrface.service.settings import Settings


def is_archive_upload(scope: Scope) -> bool:
    if scope.get("method") != "POST" or scope.get("path", "").rstrip("/") != "/v1/jobs":
        return False
    content_type = Headers(scope=scope).get("content-type", "")
    return content_type.split(";")[0].strip().lower() == "multipart/form-data"


class UploadGateMiddleware:
    def __init__(self, app: ASGIApp, settings: Settings, on_shed=None):
        self.app = app
        self.settings = settings
        self.active = 0
        self._on_shed = on_shed

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not is_archive_upload(scope):
            await self.app(scope, receive, send)
            return
        settings = self.settings
        if self.active >= settings.max_concurrent_uploads:
            if self._on_shed:
                self._on_shed("uploads")
            response = error_response(
                503, "overloaded", f"{self.active} archive uploads are in progress, the most this server takes at "
                "once (LRFACE_MAX_CONCURRENT_UPLOADS); try again later",
                headers={"Retry-After": str(settings.retry_after_s), "Connection": "close"})
            await response(scope, receive, send)
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + settings.upload_timeout
        body_done = False

        def too_slow() -> BodyTimeout:
            return BodyTimeout(f"the upload did not arrive within {settings.upload_timeout:g} s (LRFACE_UPLOAD_TIMEOUT)")

        async def deadline_receive() -> Message:
            nonlocal body_done
            if body_done:
                return await receive()
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise too_slow()
            try:
                message = await asyncio.wait_for(receive(), remaining)
            except asyncio.TimeoutError:
                raise too_slow() from None
            if message["type"] != "http.request" or not message.get("more_body", False):
                body_done = True
            return message

        self.active += 1
        try:
            await self.app(scope, deadline_receive, send)
        finally:
            self.active -= 1
