"""The gallery's own records in ``NAME__megaclass``: marker, settings and write journal.

Every record is written by one single-row insert (atomic in Milvus) and never updated in
place: a setting is a new versioned row (the newest wins, older ones are deleted after),
so a crash between two calls never loses a value (an ``upsert`` is a delete plus an insert).

The journal makes multi-row writes all-or-nothing for readers:

1. ``j:W:write`` (the write's labels and lease) is inserted before any template row of
   write ``W``; while it exists without a commit record, readers hide every row with
   ``w == W``.
2. A write that removes rows (replace, erase) then inserts ``j:W:commit`` (the labels and
   the write whose rows stay): from then on readers hide the *old* rows of those labels,
   and recovery rolls forward (deletes them) instead of back.
3. Deleting ``j:W:write`` then ``j:W:commit`` ends the write.

Recovery (:meth:`Records.recover`) of an open write: with a commit record, delete the
old rows and the records; without one, delete the write's rows and its record.
"""

from __future__ import annotations

import hashlib
import json
import time

from ...errors import InvalidInputError

MARKER = "megaclass"
LEASE_S = 300.0  # a write not ended in this time is presumed dead and recovered by others
_DUMMY = [1.0, 0.0]


def lit(value) -> str:
    """A Milvus expression literal (string, number, bool) from a JSON-able value."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float | str):
        return json.dumps(value, ensure_ascii=False)
    raise InvalidInputError(f"where= values must be strings, numbers or booleans, got {value!r}")


def lits(values) -> str:
    return "[" + ",".join(lit(v) for v in values) + "]"


class Records:
    """Key -> JSON records of one gallery (``call(what, fn, ...)`` runs a client method
    with error translation and the gallery's timeout)."""

    def __init__(self, client, name: str, call, consistency: str):
        self.client, self.name, self._call, self.consistency = client, name, call, consistency

    # ------------------------------------------------------------------ raw
    def put(self, key: str, value) -> None:
        self._call("write a record", self.client.insert, self.name,
                   [{"key": key, "value": value, "vec": _DUMMY}])

    def delete(self, keys: list[str]) -> None:
        if keys:
            self._call("delete a record", self.client.delete, self.name, filter=f"key in {lits(keys)}")

    def prefix(self, prefix: str) -> dict:
        rows = self._call("read records", self.client.query, self.name,
                          filter=f'key like {lit(prefix + "%")}', output_fields=["key", "value"],
                          consistency_level=self.consistency)
        return {r["key"]: r["value"] for r in rows}

    def get(self, key: str):
        rows = self._call("read a record", self.client.query, self.name, filter=f"key == {lit(key)}",
                          output_fields=["value"], consistency_level=self.consistency)
        return rows[0]["value"] if rows else None

    # ------------------------------------------------------------------ settings
    @staticmethod
    def _skey(key: str) -> str:
        return "s:" + hashlib.sha256(key.encode()).hexdigest()[:24] + ":"

    def setting(self, key: str, default=None):
        found = self.prefix(self._skey(key))
        return found[max(found)]["v"] if found else default

    def set_setting(self, key: str, value) -> None:
        prefix = self._skey(key)
        new = f"{prefix}{time.time_ns():020d}"
        self.put(new, {"key": key, "v": value})
        self.delete([k for k in self.prefix(prefix) if k < new])

    def settings(self) -> dict:
        newest: dict[str, tuple[str, object]] = {}
        for k, v in self.prefix("s:").items():
            if v["key"] not in newest or k > newest[v["key"]][0]:
                newest[v["key"]] = (k, v["v"])
        return {key: kv[1] for key, kv in newest.items()}

    # ------------------------------------------------------------------ journal
    def begin(self, w: int, labels: list[str]) -> None:
        self.put(f"j:{w}:write", {"labels": labels[:64], "n": len(labels),
                                  "expires": time.time() + LEASE_S})

    def mark_commit(self, w: int, labels: list[str], keep: int) -> None:
        self.put(f"j:{w}:commit", {"labels": labels, "keep": keep})

    def end(self, w: int) -> None:
        self.delete([f"j:{w}:write"])
        self.delete([f"j:{w}:commit"])

    def open_writes(self) -> dict[int, dict]:
        """Writes not ended: ``{w: {"commit": {...} or None, "expires": t}}``."""
        out: dict[int, dict] = {}
        for key, value in self.prefix("j:").items():
            _, w, kind = key.split(":")
            entry = out.setdefault(int(w), {"commit": None, "expires": 0.0})
            if kind == "commit":
                entry["commit"] = value
            else:
                entry["expires"] = value.get("expires", 0.0)
        return out

    @staticmethod
    def hide(writes: dict[int, dict]) -> str:
        """A filter expression hiding what open writes must not show ("" when none)."""
        parts = []
        pending = [w for w, e in writes.items() if e["commit"] is None]
        if pending:
            parts.append(f"w not in {lits(pending)}")
        for e in writes.values():
            c = e["commit"]
            if c is not None:
                parts.append(f"not (label in {lits(c['labels'])} and w != {int(c['keep'])})")
        return " and ".join(f"({p})" for p in parts)
