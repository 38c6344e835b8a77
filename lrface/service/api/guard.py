"""Checks that run before any request body is read: the API key, and the body size (announced and actual).

Doing both here, in front of the routes, means an unauthenticated or oversized upload is refused without being
read into memory or spooled to disk.
"""
from __future__ import annotations

import hmac

from fastapi import HTTPException
from starlette.datastructures import Headers, MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from lrface.service.api.errors import error_response
from lrface.service.settings import Settings

# Room for multipart boundaries and the small form fields next to the files.
FORM_OVERHEAD = 64 * 1024
OPEN_PATHS = ("/healthz", "/readyz", "/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json", "/")
# Static files of the docs and of the web demo: public, like the pages that load them (the demo asks for the key
# and sends it with its API calls).
DOCS_ASSETS_PREFIX = "/static-offline-docs"
OPEN_PREFIXES = (DOCS_ASSETS_PREFIX + "/", "/demo/")


# The HTML pages (docs, demo) may load only what this server serves: an asset a page would fetch from the internet
# (ReDoc's footer logo) is not even requested, so the pages behave the same on a closed network.
PAGE_PATHS = ("/", "/docs", "/redoc")
PAGE_CSP = ("default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; "
            "img-src 'self' data: blob:; font-src 'self' data:; worker-src 'self' blob:; connect-src 'self'; "
            "frame-ancestors 'self'")


class BodyTooLarge(HTTPException):
    def __init__(self, limit: int):
        super().__init__(413, f"the request body exceeds {limit} bytes")


def body_limit(settings: Settings, path: str) -> int:
    if path.startswith("/v1/jobs"):
        return settings.max_archive_bytes + FORM_OVERHEAD
    if path.startswith("/v1/embed"):
        return settings.max_upload_bytes * settings.max_embed_images + FORM_OVERHEAD
    if path.startswith("/v1/verify"):
        return 2 * settings.max_upload_bytes + FORM_OVERHEAD
    return settings.max_upload_bytes + FORM_OVERHEAD


def api_key_ok(settings: Settings, authorization: str | None) -> bool:
    if not settings.api_keys:
        return True
    scheme, _, token = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return False
    token_bytes = token.strip().encode()
    # Compare against every key (no early exit), each in constant time.
    matches = [hmac.compare_digest(token_bytes, key.encode()) for key in settings.api_keys]
    return any(matches)


class GuardMiddleware:
    def __init__(self, app: ASGIApp, settings: Settings):
        self.app = app
        self.settings = settings

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope.get("path", "")
        headers = Headers(scope=scope)
        if path not in OPEN_PATHS and not path.startswith(OPEN_PREFIXES) and not api_key_ok(self.settings, headers.get("authorization")):
            message = "a valid API key is required: send `Authorization: Bearer <key>`"
            response = error_response(401, "unauthorized", message, headers={"WWW-Authenticate": "Bearer"})
            await response(scope, receive, send)
            return
        limit = body_limit(self.settings, path)
        try:
            announced = int(headers.get("content-length", "0") or 0)
        except ValueError:
            announced = 0
        if announced > limit:
            response = error_response(413, "payload_too_large", f"the request body is {announced} bytes; the limit is {limit}",
                                      headers={"Connection": "close"})
            await response(scope, receive, send)
            return
        if path in PAGE_PATHS:
            send = _with_page_policy(send)
        received = 0

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise BodyTooLarge(limit)
            return message

        await self.app(scope, counting_receive, send)


def _with_page_policy(send: Send) -> Send:
    async def send_with_policy(message: Message) -> None:
        if message["type"] == "http.response.start":
            MutableHeaders(scope=message)["Content-Security-Policy"] = PAGE_CSP
        await send(message)

    return send_with_policy
