"""``/v1/keys`` and ``/v1/audit``: key management and the audit log (admin only)."""

from __future__ import annotations

import csv
import io
import json
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Path, Query
from starlette.responses import Response

from ..deps import authorize, get_service
from ..keys import KeyInfo
from ..schemas import REFUSALS, AuditOut, AuditRow, ErrorOut, KeyCreatedOut, KeyIn, KeyOut
from ..service import Service

router = APIRouter(prefix="/v1", tags=["admin"],
                   responses={**REFUSALS, 422: {"model": ErrorOut}})
Svc = Annotated[Service, Depends(get_service)]
Admin = Annotated[KeyInfo, Depends(authorize("admin", "keys"))]
AuditOperation = Literal["enroll", "add", "erase", "identify", "verify", "calibrate", "keys", "read",
                         "request"]


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


def _rows(svc: Service, limit, operation, label, key_id, since) -> list[dict]:
    labels = None if label is None else [label, svc.gallery.erased_tag(label)]
    return svc.audit.query(limit=limit, operation=operation, label=labels, key_id=key_id, since=since)


Limit = Annotated[int, Query(ge=1, le=10_000)]
Operation = Annotated[AuditOperation | None, Query()]
LabelQ = Annotated[str | None, Query(max_length=256)]
KeyIdQ = Annotated[str | None, Query(max_length=64)]
SinceQ = Annotated[str | None, Query(max_length=64, description="ISO 8601 time (UTC).")]


@router.get("/audit", response_model=AuditOut)
def audit(svc: Svc, key: Admin, limit: Limit = 100, operation: Operation = None, label: LabelQ = None,
          key_id: KeyIdQ = None, since: SinceQ = None) -> AuditOut:
    """Audit rows, newest first, filtered by operation, label involved, key and time.

    An erased label is kept in the log only as its salted hash (``erased:<hex>``); filtering
    by the label finds those rows too."""
    return AuditOut(rows=[AuditRow(**r) for r in _rows(svc, limit, operation, label, key_id, since)])


def _cell(value) -> str:
    """A CSV cell that a spreadsheet will not run: text starting with = + - @ (or a tab or
    carriage return) is a formula there (CSV injection), so it gets a leading apostrophe."""
    text = "" if value is None else str(value)
    return "'" + text if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text


@router.get("/audit/export", response_class=Response,
            responses={200: {"content": {"text/csv": {}}, "description": "The rows as CSV."}})
def audit_export(svc: Svc, key: Admin, limit: Limit = 10_000, operation: Operation = None,
                 label: LabelQ = None, key_id: KeyIdQ = None, since: SinceQ = None) -> Response:
    """The rows of ``/v1/audit`` (same filters, up to 10,000) as a CSV file, newest first.
    Labels are one JSON list per row; cells a spreadsheet would run as formulas are quoted
    with a leading apostrophe. The export itself is audited."""
    rows = _rows(svc, limit, operation, label, key_id, since)
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["id", "time", "key_id", "operation", "labels", "decision", "status"])
    for r in rows:
        writer.writerow([_cell(r["id"]), _cell(r["time"]), _cell(r["key_id"]), _cell(r["operation"]),
                         _cell(json.dumps(r["labels"], ensure_ascii=False)), _cell(r["decision"]),
                         _cell(r["status"])])
    svc.audit.record(key.id, "keys", [], f"exported {len(rows)} audit rows", 200)
    return Response(buf.getvalue(), media_type="text/csv; charset=utf-8",
                    headers={"Content-Disposition": 'attachment; filename="megaclass-audit.csv"'})
