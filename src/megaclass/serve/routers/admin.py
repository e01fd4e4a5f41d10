"""``/v1/keys`` and ``/v1/audit``: key management and the audit log (admin only)."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Path, Query

from ..deps import authorize, get_service
from ..keys import KeyInfo
from ..schemas import AuditOut, AuditRow, ErrorOut, KeyCreatedOut, KeyIn, KeyOut
from ..service import Service

router = APIRouter(prefix="/v1", tags=["admin"],
                   responses={401: {"model": ErrorOut}, 403: {"model": ErrorOut}, 422: {"model": ErrorOut}})
Svc = Annotated[Service, Depends(get_service)]
Admin = Annotated[KeyInfo, Depends(authorize("admin", "keys"))]
AuditOperation = Literal["enroll", "add", "erase", "identify", "verify", "keys", "read", "request"]


@router.get("/keys", response_model=list[KeyOut])
def list_keys(svc: Svc, key: Admin) -> list[KeyOut]:
    """Every key (active and revoked), never their secrets."""
    return [KeyOut(**k.to_dict()) for k in svc.keys.list()]


@router.post("/keys", response_model=KeyCreatedOut, status_code=201)
def create_key(body: KeyIn, svc: Svc, key: Admin) -> KeyCreatedOut:
    """Create a key; its token is in this response only."""
    info, token = svc.keys.add(body.name, body.role)
    svc.audit.record(key.id, "keys", [], f"created key {info.id} ({info.role})", 201)
    return KeyCreatedOut(key=KeyOut(**info.to_dict()), token=token)


@router.delete("/keys/{key_id}", response_model=KeyOut, responses={404: {"model": ErrorOut}})
def revoke_key(key_id: Annotated[str, Path(min_length=1, max_length=64)], svc: Svc, key: Admin) -> KeyOut:
    """Revoke a key at once."""
    info = svc.keys.revoke(key_id)
    svc.audit.record(key.id, "keys", [], f"revoked key {info.id}", 200)
    return KeyOut(**info.to_dict())


@router.get("/audit", response_model=AuditOut)
def audit(svc: Svc, key: Admin,
          limit: Annotated[int, Query(ge=1, le=10_000)] = 100,
          operation: Annotated[AuditOperation | None, Query()] = None,
          label: Annotated[str | None, Query(max_length=256)] = None,
          key_id: Annotated[str | None, Query(max_length=64)] = None,
          since: Annotated[str | None, Query(max_length=64, description="ISO 8601 time (UTC).")] = None
          ) -> AuditOut:
    """Audit rows, newest first, filtered by operation, label involved, key and time.

    An erased label is kept in the log only as its salted hash (``erased:<hex>``); filtering
    by the label finds those rows too."""
    labels = None if label is None else [label, svc.gallery.erased_tag(label)]
    rows = svc.audit.query(limit=limit, operation=operation, label=labels, key_id=key_id, since=since)
    return AuditOut(rows=[AuditRow(**r) for r in rows])
