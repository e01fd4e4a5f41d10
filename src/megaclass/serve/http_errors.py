"""Typed megaclass errors -> HTTP statuses with a JSON body ``{"error", "message"}``.

| error | status |
|---|---|
| PayloadTooLargeError (a limit) | 413 |
| CorruptImageError (undecodable upload) | 400 |
| UnknownLabelError | 404 |
| DuplicateLabelError | 409 |
| NotCalibratedError (a decision on a gallery never calibrated, no threshold given) | 409 |
| ModelMismatchError (queries of another model than the gallery's templates: re-embedded?) | 409 |
| GalleryClosedError (closing), StoreBusyError (another process holds the write lock: retry) | 503 |
| InvalidInputError (NaN, wrong dimension, empty), ConfigError, body validation | 422 |
| ReadOnlyGalleryError (a write to a read-only gallery); a gallery backend that is down (retry) | 503 |
| any other MegaclassError | 400 |
| anything else (a bug, an exhausted resource) | 500, ``{"error": "InternalError"}`` |

A 500 names no exception message and no traceback (they are logged on the server), and
leaves an audit row with the operation when the route had one.
"""

from __future__ import annotations

import logging
import re

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse

from ..errors import (
    ConfigError,
    CorruptImageError,
    DuplicateLabelError,
    GalleryClosedError,
    InvalidInputError,
    MegaclassError,
    ModelMismatchError,
    NotCalibratedError,
    ReadOnlyGalleryError,
    StoreBusyError,
    UnknownLabelError,
)
from .limits import PayloadTooLargeError

_STATUS: tuple[tuple[type[Exception], int], ...] = (
    (PayloadTooLargeError, 413), (CorruptImageError, 400), (UnknownLabelError, 404),
    (DuplicateLabelError, 409), (NotCalibratedError, 409), (ModelMismatchError, 409),
    (GalleryClosedError, 503), (StoreBusyError, 503), (InvalidInputError, 422), (ConfigError, 422),
    (ReadOnlyGalleryError, 503), (ConnectionError, 503), (MegaclassError, 400),
)
_HTTP_NAMES = {400: "BadRequest", 401: "Unauthorized", 403: "Forbidden", 404: "NotFound", 409: "Conflict",
               405: "MethodNotAllowed", 413: "PayloadTooLargeError", 422: "ValidationError",
               429: "TooManyRequests",
               500: "InternalError", 503: "ServiceUnavailable"}
log = logging.getLogger("megaclass.serve")
_AUDITED = "_megaclass_audited"


def internal_decision(exc: BaseException) -> str:
    """The audit decision of an internal error: its type only (a message may hold data)."""
    return f"error: internal ({type(exc).__name__})"


def mark_audited(exc: BaseException) -> None:
    """Note that ``exc`` already has its audit row (the 500 handler then writes none)."""
    try:
        setattr(exc, _AUDITED, True)
    except AttributeError:  # exceptions with __slots__: at worst a second row
        pass


_OBJECT_REPR = re.compile(r"<[\w.]+ object at 0x[0-9a-fA-F]+>")


def clean_message(text: str) -> str:
    """An error message without Python object reprs (``<_io.BytesIO object at 0x...>``, as
    a decoder may put in its message): they say nothing to a caller and leak addresses."""
    return _OBJECT_REPR.sub("the data", text)


def status_of(exc: Exception) -> int:
    """The HTTP status a megaclass error maps to."""
    for cls, status in _STATUS:
        if isinstance(exc, cls):
            return status
    return 500


def error_response(status: int, error: str, message: str, detail=None, headers=None) -> JSONResponse:
    body = {"error": error, "message": message}
    if detail is not None:
        body["detail"] = detail
    return JSONResponse(body, status_code=status, headers=headers)


def install(app: FastAPI) -> None:
    """Register the exception handlers on ``app``."""

    @app.exception_handler(MegaclassError)
    async def _megaclass(request: Request, exc: MegaclassError):
        return error_response(status_of(exc), type(exc).__name__, clean_message(str(exc)))

    @app.exception_handler(HTTPException)
    async def _http(request: Request, exc: HTTPException):
        return error_response(exc.status_code, _HTTP_NAMES.get(exc.status_code, "HTTPError"),
                              str(exc.detail), headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _internal(request: Request, exc: Exception):
        # runs in Starlette's outermost middleware, which re-raises after this response
        log.error("internal error on %s %s", request.method, request.url.path, exc_info=exc)
        if not getattr(exc, _AUDITED, False):
            service = getattr(request.app.state, "service", None)
            state = request.scope.get("state", {})
            if service is not None and not service.closed:
                try:
                    await run_in_threadpool(service.audit.record, state.get("audit_key_id"),
                                            state.get("audit_operation", "request"), [],
                                            internal_decision(exc), 500)
                except Exception:  # noqa: BLE001 - the audit db itself may be what failed
                    log.exception("could not audit an internal error")
        return error_response(500, "InternalError",
                              "internal error (logged on the server); the request may be retried")

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError):
        # keep location, message and type; never echo the input (it may be vectors or images)
        detail = [{"loc": list(e.get("loc", ())), "msg": e.get("msg", ""), "type": e.get("type", "")}
                  for e in exc.errors()]
        first = detail[0] if detail else {"loc": [], "msg": "invalid request"}
        where = ".".join(str(p) for p in first["loc"])
        return error_response(422, "ValidationError", f"{where}: {first['msg']}",
                              jsonable_encoder(detail))
