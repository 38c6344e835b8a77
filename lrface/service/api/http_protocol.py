"""uvicorn's httptools protocol with limits on request heads, before any application code runs.

uvicorn (with httptools) puts no bound on the size of a request's head (request line and headers) and no time
limit on receiving it: a client could send 100 MB of headers (all kept in memory) or trickle them for ever,
holding a connection. `GuardedHttpToolsProtocol` adds both, per connection:

- `max_header_bytes`: a request head larger than this is answered 431 and the connection closed (checked as the
  bytes arrive, so at most that plus one socket read, 256 KiB, is ever held for it).
- `header_timeout`: the head of a request must be complete within this many seconds of its first byte (of the
  connection, for the first request); otherwise 408 and the connection is closed. An idle keep-alive
  connection is closed after uvicorn's `timeout_keep_alive` as before.

The limits come from the settings (`LRFACE_MAX_HEADER_BYTES`, `LRFACE_HEADER_TIMEOUT`). `lrface serve` passes
this class to uvicorn as its `http` protocol.
"""
from __future__ import annotations

import asyncio
import json

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

_REASONS = {408: b"Request Timeout", 431: b"Request Header Fields Too Large"}


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        from lrface.service.settings import get_settings

        settings = get_settings()
        self.max_header_bytes = settings.max_header_bytes
        self.header_timeout = settings.header_timeout
        self._in_head = True  # reading a request head (request line and headers)
        self._head_bytes = 0
        self._head_timer: asyncio.TimerHandle | None = None
        self._refused = False

    # -- the head timer ------------------------------------------------------------------------------------------
    def _arm_head_timer(self) -> None:
        if self._head_timer is None:
            self._head_timer = self.loop.call_later(self.header_timeout, self._head_timed_out)

    def _disarm_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self._in_head:
            self._refuse(408, "request_timeout",
                         f"the request headers did not arrive within {self.header_timeout:g} s")

    def _refuse(self, status: int, error: str, message: str) -> None:
        if self._refused or self.transport is None or self.transport.is_closing():
            return
        self._refused = True
        self.logger.warning("refused a request head: %s", message)
        # An answer only when no earlier request of this connection is still being answered.
        if self.cycle is None or self.cycle.response_complete:
            body = json.dumps({"error": error, "message": message}).encode()
            self.transport.write(b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\n"
                                 b"connection: close\r\n\r\n" % (status, _REASONS[status], len(body)) + body)
        self.transport.close()

    # -- uvicorn's protocol ----------------------------------------------------------------------------------------
    def connection_made(self, transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_head_timer()

    def connection_lost(self, exc) -> None:
        self._disarm_head_timer()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return
        if self._in_head:
            self._head_bytes += len(data)
        super().data_received(data)
        # (A read that also holds the start of the body counts as head: one read is at most 256 KiB.)
        if self._in_head and self._head_bytes > self.max_header_bytes:
            self._refuse(431, "headers_too_large",
                         f"the request line and headers exceed {self.max_header_bytes} bytes (LRFACE_MAX_HEADER_BYTES)")

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._in_head = True
        self._arm_head_timer()

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._head_bytes = 0
        self._disarm_head_timer()
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._in_head = True  # what comes next on this connection is the next request's head
        self._head_bytes = 0
