"""Refusals that clients actually receive: the unread request body is drained (bounded) before the answer.

A server that answers 413 / 429 / 503 before reading the request body and then closes the connection with the
body still unread in its socket makes the kernel reset the connection; the client, still sending, gets the
reset instead of the answer and its `Retry-After`. So when a refusal is about to be sent while body bytes are
still on their way, `DrainBeforeRefusalMiddleware` first reads and discards them (no memory is kept), at most
`refusal_drain_bytes` bytes and for at most `refusal_drain_timeout` seconds. A body drained to its end lets the
connection be kept alive (a `Connection: close` of the refusal is dropped); one that is larger or slower than
that is answered with `Connection: close` as before (best effort). A client that announced `Expect:
100-continue` and was not asked for its body yet is answered at once: it has sent nothing to drain.
"""
from __future__ import annotations

import asyncio

from starlette.datastructures import Headers, MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

REFUSAL_STATUSES = frozenset({413, 429, 503})


class DrainBeforeRefusalMiddleware:
    def __init__(self, app: ASGIApp, max_bytes: int, timeout: float):
        self.app = app
        self.max_bytes = max_bytes
        self.timeout = timeout

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        announced = _content_length(headers)
        has_body = (announced or 0) > 0 or "transfer-encoding" in headers
        state = {"done": not has_body, "asked": False, "bytes": 0}

        async def tracking_receive() -> Message:
            state["asked"] = True
            message = await receive()
            if message["type"] == "http.request":
                state["bytes"] += len(message.get("body", b""))
                if not message.get("more_body", False):
                    state["done"] = True
            else:
                state["done"] = True  # disconnected: nothing more will come
            return message

        async def draining_send(message: Message) -> None:
            if message["type"] == "http.response.start" and message["status"] in REFUSAL_STATUSES \
                    and not state["done"]:
                out = MutableHeaders(scope=message)
                if headers.get("expect", "").lower() == "100-continue" and not state["asked"]:
                    drained = False  # (the client waits for "100 Continue" before it sends a byte)
                else:
                    drained = await self._drain(receive, announced, state)
                if drained:
                    if out.get("connection", "").lower() == "close":
                        del out["connection"]
                else:
                    out["Connection"] = "close"
            await send(message)

        await self.app(scope, tracking_receive, draining_send)

    async def _drain(self, receive: Receive, announced: int | None, state: dict) -> bool:
        """Read and discard the rest of the body; True when all of it arrived within the bounds."""
        if announced is not None and announced - state["bytes"] > self.max_bytes:
            return False
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout
        drained = 0
        while True:
            remaining = deadline - loop.time()
            if remaining <= 0:
                return False
            try:
                message = await asyncio.wait_for(receive(), remaining)
            except asyncio.TimeoutError:
                return False
            if message["type"] != "http.request":
                state["done"] = True
                return False
            drained += len(message.get("body", b""))
            if drained > self.max_bytes:
                return False
            if not message.get("more_body", False):
                state["done"] = True
                return True


def _content_length(headers: Headers) -> int | None:
    try:
        value = int(headers.get("content-length", ""))
    except ValueError:
        return None
    return value if value >= 0 else None
