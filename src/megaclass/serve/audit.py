"""The audit log: who did what to which labels, and what was decided (table ``audit``).

One row per enroll, add, erase, identify, verify and calibrate, per refused attempt at any route
that needs a key (401 and 403, with the label it targeted; ``read`` for routes that only
read) and per request that failed inside (500): time, key id, operation, the labels
involved (JSON list), the decision and the HTTP status. Never images, vectors or scores
of individual templates.

Example
-------
>>> log = AuditLog(ServiceDB("gallery/"))                               # doctest: +SKIP
>>> log.record("3f2a9c01", "erase", ["alice"], "erased 1 template", 200)  # doctest: +SKIP
>>> log.query(operation="erase", limit=10)[0]["labels"]                 # doctest: +SKIP
['alice']
"""

from __future__ import annotations

import json
from collections.abc import Sequence

from ..errors import ConfigError
from .db import ServiceDB, now

OPERATIONS = ("enroll", "add", "erase", "identify", "verify", "calibrate", "keys", "read", "request")
_MAX_LABELS = 100  # labels kept per row (a batch identify may involve many)


class AuditLog:
    """Append and query audit rows."""

    def __init__(self, db: ServiceDB):
        self.db = db

    def record(self, key_id: str | None, operation: str, labels: Sequence[str | None],
               decision: str, status: int) -> None:
        """Append one row (its own small transaction)."""
        kept = [lab for lab in labels if lab is not None][:_MAX_LABELS]
        with self.db.transaction() as conn:
            conn.execute("INSERT INTO audit (ts, key_id, operation, labels, decision, status) "
                         "VALUES (?, ?, ?, ?, ?, ?)",
                         (now(), key_id, operation, json.dumps(kept), decision[:500], int(status)))

    def query(self, *, limit: int = 100, operation: str | None = None,
              label: str | list[str] | None = None, key_id: str | None = None,
              since: str | None = None) -> list[dict]:
        """Newest rows first, filtered by operation, label involved (any of a list: e.g. a
        label and its erased tag), key id and time (ISO)."""
        if type(limit) is not int or not 1 <= limit <= 10_000:
            raise ConfigError(f"limit must be an int in 1..10000, got {limit!r}")
        labels = [label] if isinstance(label, str) else label
        filters = [("operation = ?", operation), ("key_id = ?", key_id), ("ts >= ?", since)]
        where = [clause for clause, value in filters if value is not None]
        params: list = [value for _, value in filters if value is not None]
        if labels:
            where.append("EXISTS (SELECT 1 FROM json_each(audit.labels) WHERE value IN ("
                         + ", ".join("?" * len(labels)) + "))")
            params += labels
        sql = ("SELECT id, ts, key_id, operation, labels, decision, status FROM audit"
               + (" WHERE " + " AND ".join(where) if where else "") + " ORDER BY id DESC LIMIT ?")
        rows = self.db.query(sql, (*params, limit))
        return [{"id": r[0], "time": r[1], "key_id": r[2], "operation": r[3],
                 "labels": json.loads(r[4]), "decision": r[5], "status": r[6]} for r in rows]
