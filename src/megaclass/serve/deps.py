"""FastAPI dependencies: the service, and API-key authorisation by role."""

from __future__ import annotations

import json
import time
from typing import NoReturn

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


def audit_labels(service: Service, operation: str, labels: list[str]) -> list[str]:
    """The labels an audit row of ``operation`` may name: an erase request names a label
    someone wants forgotten, so every erase row (done, refused, unknown label) keeps only
    its salted hash, like the rows the erase itself rewrites."""
    if operation != "erase":
        return labels
    tags = []
    for label in labels:
        try:
            tags.append(service.gallery.erased_tag(label))
        except Exception:  # noqa: BLE001 - not a valid label (control characters): name nothing
            continue
    return tags


async def _refused(request: Request, service: Service, token: str | None, operation: str) -> NoReturn:
    """Audit a 401 (within the client's refusal budget) and raise it, or raise 429."""
    client = request.client.host if request.client else "unknown"
    verdict = service.refusals.check(client, now=time.monotonic())
    claimed = claimed_key_id(token)
    why = "no API key" if not token else f"unknown or revoked key {claimed or '(malformed)'}"
    too_many = HTTPException(429, "too many refused requests from this client; retry later", headers={
        "Retry-After": str(service.refusals.retry_after(client, now=time.monotonic()))})
    if verdict == "limit":
        raise too_many
    labels = audit_labels(service, operation, await _target_labels(request))
    if verdict == "limit-first":
        decision = (f"refused: {why}; more than {service.refusals.max_refusals} refusals in "
                    f"{service.refusals.window_s:g} s from this client: further ones get 429, unaudited")
        await run_in_threadpool(service.audit.record, None, operation, labels, decision, 429)
        raise too_many
    await run_in_threadpool(service.audit.record, None, operation, labels, f"refused: {why}", 401)
    raise HTTPException(401, "missing, unknown or revoked API key (send `Authorization: Bearer <key>`)",
                        headers={"WWW-Authenticate": "Bearer"})


def authorize(role: str, operation: str | None = None):
    """Dependency: the caller's key, 401 if missing/unknown/revoked, 403 below ``role``.

    Every refused attempt is written to the audit log with the label it targeted (as the
    operation, or ``read`` for routes that only read; hashed for erase); the operation and
    key id are also kept on ``request.state`` so that an internal error can be audited (see
    http_errors). Past a client's refusal budget (ratelimit.py) 401s become 429s.
    """
    audited_as = operation or "read"

    async def check(request: Request,
                    credentials: HTTPAuthorizationCredentials | None = Depends(bearer)) -> KeyInfo:
        service = get_service(request)
        token = credentials.credentials if credentials else None
        request.state.audit_operation = audited_as
        key = await run_in_threadpool(service.keys.authenticate, token)
        if key is None:
            await _refused(request, service, token, audited_as)
        request.state.audit_key_id = key.id
        if not role_allows(key.role, role):
            labels = audit_labels(service, audited_as, await _target_labels(request))
            await run_in_threadpool(service.audit.record, key.id, audited_as, labels,
                                    f"denied: role {key.role}", 403)
            raise HTTPException(403, f"key {key.id} has role {key.role!r}; this operation needs {role!r}")
        return key

    return check
