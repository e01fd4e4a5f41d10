"""Typed megaclass errors -> HTTP statuses with a JSON body ``{"error", "message"}``.

| error | status |
|---|---|
| PayloadTooLargeError (a limit) | 413 |
| CorruptImageError (undecodable upload) | 400 |
| UnknownLabelError | 404 |
| DuplicateLabelError | 409 |
| InvalidInputError (NaN, wrong dimension, empty), ConfigError, body validation | 422 |
| any other MegaclassError | 400 |
"""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse

from ..errors import (
    ConfigError,
    CorruptImageError,
    DuplicateLabelError,
    InvalidInputError,
    MegaclassError,
    UnknownLabelError,
)
from .limits import PayloadTooLargeError

_STATUS: tuple[tuple[type[Exception], int], ...] = (
    (PayloadTooLargeError, 413), (CorruptImageError, 400), (UnknownLabelError, 404),
    (DuplicateLabelError, 409), (InvalidInputError, 422), (ConfigError, 422), (MegaclassError, 400),
)
_HTTP_NAMES = {400: "BadRequest", 401: "Unauthorized", 403: "Forbidden", 404: "NotFound",
               405: "MethodNotAllowed", 413: "PayloadTooLargeError", 422: "ValidationError",
               503: "ServiceUnavailable"}


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
        return error_response(status_of(exc), type(exc).__name__, str(exc))

    @app.exception_handler(HTTPException)
    async def _http(request: Request, exc: HTTPException):
        return error_response(exc.status_code, _HTTP_NAMES.get(exc.status_code, "HTTPError"),
                              str(exc.detail), headers=getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError):
        # keep location, message and type; never echo the input (it may be vectors or images)
        detail = [{"loc": list(e.get("loc", ())), "msg": e.get("msg", ""), "type": e.get("type", "")}
                  for e in exc.errors()]
        first = detail[0] if detail else {"loc": [], "msg": "invalid request"}
        where = ".".join(str(p) for p in first["loc"])
        return error_response(422, "ValidationError", f"{where}: {first['msg']}",
                              jsonable_encoder(detail))
