"""Every error the API returns is JSON `{"error": code, "message": text}` (plus optional details); this is where."""
from __future__ import annotations

import logging
from http import HTTPStatus

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from lrface.core.face import ImageDecodeError

log = logging.getLogger("lrface.api")


class APIError(Exception):
    """An error with a machine-readable code, raised anywhere below a route."""

    def __init__(self, status_code: int, error: str, message: str, headers: dict[str, str] | None = None, **extra):
        super().__init__(message)
        self.status_code = status_code
        self.error = error
        self.message = message
        self.headers = headers
        self.extra = extra


# Decode failures: what the client sent is not something we take (415), is too big (413), or is broken (422).
_DECODE_STATUS = {"not_an_image": 415, "unsupported_format": 415, "too_large": 413}


def image_error(exc: ImageDecodeError, filename: str | None = None) -> APIError:
    extra = {"filename": filename} if filename else {}
    return APIError(_DECODE_STATUS.get(exc.reason, 422), exc.reason, exc.message, **extra)


_STATUS_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    408: "request_timeout",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "validation_error",
    429: "too_many_requests",
    500: "internal_error",
    503: "unavailable",
}


def error_body(error: str, message: str, **extra) -> dict:
    return {"error": error, "message": message, **extra}


def error_response(status_code: int, error: str, message: str, headers=None, **extra) -> JSONResponse:
    return JSONResponse(error_body(error, message, **extra), status_code=status_code, headers=headers)


async def _api_error(request: Request, exc: APIError) -> JSONResponse:
    headers = {"WWW-Authenticate": "Bearer"} if exc.status_code == 401 else {}
    headers.update(exc.headers or {})
    return error_response(exc.status_code, exc.error, exc.message, headers=headers or None, **exc.extra)


async def _job_store_down(request: Request, exc: Exception) -> JSONResponse:
    # Redis (job state and broker) unreachable or still loading after a restart: a temporary condition.
    log.warning("job store unavailable on %s %s: %s: %s", request.method, request.url.path, type(exc).__name__, exc)
    retry_after = getattr(getattr(request.app.state, "services", None), "settings", None)
    seconds = getattr(retry_after, "retry_after_s", 2)
    return error_response(503, "jobs_unavailable", "the job store (Redis) is unreachable; try again shortly",
                          headers={"Retry-After": str(seconds)})


async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    code = _STATUS_CODES.get(exc.status_code) or HTTPStatus(exc.status_code).phrase.lower().replace(" ", "_")
    message = exc.detail if isinstance(exc.detail, str) else HTTPStatus(exc.status_code).phrase
    if exc.status_code == 404 and exc.detail == "Not Found":
        message = f"no such endpoint: {request.method} {request.url.path}"
    if exc.status_code == 405:
        message = f"{request.method} is not allowed on {request.url.path}"
    return error_response(exc.status_code, code, message, headers=getattr(exc, "headers", None))


async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    details = [
        {"loc": [str(p) for p in err.get("loc", ())], "msg": err.get("msg", ""), "type": err.get("type", "")}
        for err in exc.errors()
    ]
    summary = "; ".join(f"{'.'.join(d['loc'][1:] or d['loc'])}: {d['msg']}" for d in details) or "invalid request"
    return error_response(422, "validation_error", summary, details=jsonable_encoder(details))


CLIENT_CLOSED_REQUEST = 499  # nginx's code for "the client went away first": what the access log and metrics show


async def _client_disconnected(request: Request, exc: ClientDisconnect) -> Response:
    # The client went away before its body arrived: nobody to answer, nothing went wrong here.
    log.info("client disconnected during %s %s", request.method, request.url.path)
    return Response(status_code=CLIENT_CLOSED_REQUEST)


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error on %s %s", request.method, request.url.path)
    return error_response(500, "internal_error", "internal server error")


def install_error_handlers(app: FastAPI) -> None:
    import redis.exceptions

    app.add_exception_handler(APIError, _api_error)
    app.add_exception_handler(redis.exceptions.ConnectionError, _job_store_down)
    app.add_exception_handler(redis.exceptions.TimeoutError, _job_store_down)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(ClientDisconnect, _client_disconnected)
    app.add_exception_handler(Exception, _unexpected)
