"""FastAPI dependencies: the service, and API-key authorisation by role."""

from __future__ import annotations

from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from .keys import KeyInfo, role_allows
from .service import Service

bearer = HTTPBearer(auto_error=False, description="API key: `Authorization: Bearer mck_<id>.<secret>`")


def get_service(request: Request) -> Service:
    return request.app.state.service


def authorize(role: str, operation: str | None = None):
    """Dependency: the caller's key, 401 if missing/unknown/revoked, 403 below ``role``.

    A refused attempt at an audited ``operation`` is written to the audit log.
    """

    def check(request: Request,
              credentials: HTTPAuthorizationCredentials | None = Depends(bearer)) -> KeyInfo:
        service = get_service(request)
        key = service.keys.authenticate(credentials.credentials if credentials else None)
        if key is None:
            raise HTTPException(401, "missing, unknown or revoked API key "
                                     "(send `Authorization: Bearer <key>`)",
                                headers={"WWW-Authenticate": "Bearer"})
        if not role_allows(key.role, role):
            if operation:
                service.audit.record(key.id, operation, [], f"denied: role {key.role}", 403)
            raise HTTPException(403, f"key {key.id} has role {key.role!r}; this operation needs {role!r}")
        return key

    return check
