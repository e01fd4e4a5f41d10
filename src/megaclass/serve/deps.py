"""FastAPI dependencies: the service, and API-key authorisation by role."""

from __future__ import annotations

import json

from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.concurrency import run_in_threadpool

from .keys import KeyInfo, claimed_key_id, role_allows
from .service import Service

bearer = HTTPBearer(auto_error=False, description="API key: `Authorization: Bearer mck_<id>.<secret>`")


def get_service(request: Request) -> Service:
    return request.app.state.service


async def _target_labels(request: Request) -> list[str]:
    """The label a request is about (path, form field or JSON body), for the audit row of a
    refused attempt. FastAPI has read and cached the body by the time dependencies run."""
    label = request.path_params.get("label")
    if label is None:
        content_type = request.headers.get("content-type", "")
        try:
            if content_type.startswith(("multipart/form-data", "application/x-www-form-urlencoded")):
                label = (await request.form()).get("label")
            elif content_type.startswith("application/json"):
                body = json.loads(await request.body() or b"null")
                label = body.get("label") if isinstance(body, dict) else None
        except (ValueError, RuntimeError, AssertionError):  # malformed body: no label to name
            label = None
    return [label[:256]] if isinstance(label, str) and label else []


def authorize(role: str, operation: str | None = None):
    """Dependency: the caller's key, 401 if missing/unknown/revoked, 403 below ``role``.

    Every refused attempt is written to the audit log with the label it targeted (as the
    operation, or ``read`` for routes that only read); the operation and key id are also
    kept on ``request.state`` so that an internal error can be audited (see http_errors).
    """
    audited_as = operation or "read"

    async def check(request: Request,
                    credentials: HTTPAuthorizationCredentials | None = Depends(bearer)) -> KeyInfo:
        service = get_service(request)
        token = credentials.credentials if credentials else None
        request.state.audit_operation = audited_as
        key = await run_in_threadpool(service.keys.authenticate, token)
        if key is None:
            claimed = claimed_key_id(token)
            why = "no API key" if not token else f"unknown or revoked key {claimed or '(malformed)'}"
            await run_in_threadpool(service.audit.record, None, audited_as,
                                    await _target_labels(request), f"refused: {why}", 401)
            raise HTTPException(401, "missing, unknown or revoked API key "
                                     "(send `Authorization: Bearer <key>`)",
                                headers={"WWW-Authenticate": "Bearer"})
        request.state.audit_key_id = key.id
        if not role_allows(key.role, role):
            await run_in_threadpool(service.audit.record, key.id, audited_as,
                                    await _target_labels(request), f"denied: role {key.role}", 403)
            raise HTTPException(403, f"key {key.id} has role {key.role!r}; this operation needs {role!r}")
        return key

    return check
