"""Logging of every lrface process: one JSON object per line, each with the request id of the work it belongs to.

    {"ts": "2025-01-01T12:00:00.123Z", "level": "INFO", "logger": "lrface.access", "message": "...",
     "request_id": "3f2c...", ...extra fields}

`request_id` is the `X-Request-ID` of the HTTP request being served (taken from the client when it sends a sane
one, else made up, and echoed in the response), the Celery task id inside a worker task, and null outside both
(start-up, shutdown). Nothing here logs headers or bodies, so API keys and uploads never reach the logs.
`LRFACE_LOG_FORMAT=text` gives plain lines for a terminal instead.
"""
from __future__ import annotations

import contextvars
import json
import logging
import re
import sys
import time
import uuid

request_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar("lrface_request_id", default=None)

# A client's X-Request-ID is kept only when it is short and plain (it goes into logs and a response header).
_SANE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")

# Attributes every LogRecord has; anything else on a record came as `extra=` and is logged as a field
# (but for uvicorn's copy of its message with terminal colour codes).
_RECORD_FIELDS = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message", "asctime", "request_id", "color_message"}


def new_request_id() -> str:
    return uuid.uuid4().hex


def sanitize_request_id(value: str | None) -> str:
    """The client's id when it is acceptable, else a fresh one."""
    if value and _SANE_ID.match(value):
        return value
    return new_request_id()


class RequestIdFilter(logging.Filter):
    """Puts the current request id on every record (as `record.request_id`)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request_id"):
            record.request_id = request_id_var.get()
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "request_id": getattr(record, "request_id", None),
        }
        for key, value in vars(record).items():
            if key not in _RECORD_FIELDS and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["exc_info"] = self.formatException(record.exc_info)
        if record.stack_info:
            entry["stack_info"] = self.formatStack(record.stack_info)
        return json.dumps(entry, default=str, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    def __init__(self):
        super().__init__("%(asctime)s %(levelname)s %(name)s [%(request_id)s]: %(message)s")


def configure_logging(level: str = "info", fmt: str = "json", stream=None) -> None:
    """Replace the root logger's handlers with one that writes `fmt` lines to stderr (idempotent)."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    handler.addFilter(RequestIdFilter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    logging.captureWarnings(True)
    # uvicorn's loggers: through the root handler above, never their own text handlers.
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        lg = logging.getLogger(name)
        lg.handlers = []
        lg.propagate = True
