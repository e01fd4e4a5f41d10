""":class:`Link`: one open Milvus gallery's connection, and the reads every part of the
gallery shares: calls with error translation and a bounded wait, the journal's hiding of
unfinished writes, scans, counts and the read-your-deletes fence.

The gallery (:mod:`.gallery`), its journaled writes (:mod:`.writes`), its operations
(:mod:`.ops`) and its tuning (:mod:`.tune`) are each handed the same ``Link``.
"""

from __future__ import annotations

import threading

from ...errors import GalleryClosedError
from . import schema
from .connect import MilvusTarget, calling
from .errors import MilvusUnavailableError
from .records import Records


class Link:
    """A gallery's client, collections and records (``name``, ``meta_name``, ``records``),
    ``search_params`` (the index's search knob in this client) and the lock its writes hold."""

    def __init__(self, target: MilvusTarget, client, version: str):
        self.target, self.client, self.server_version = target, client, version
        self.name, self.meta_name = target.collection, target.collection + schema.META_SUFFIX
        self.records = Records(client, self.meta_name, self.call, target.consistency)
        self.lock = threading.RLock()
        self.closed = False
        self.search_params: dict = {}

    @property
    def uri(self) -> str:
        return self.target.redacted()

    @property
    def consistency(self) -> str:
        return self.target.consistency

    def close(self) -> None:
        self.closed = True
        try:
            self.client.close()
        except Exception:  # noqa: BLE001 - closing a dead connection
            pass

    def call(self, what: str, fn, *args, **kwargs):
        """``fn(*args, **kwargs)`` with the URI's timeout, errors translated (``what``
        names the step); a collection a restarted server has not reloaded is loaded once."""
        if self.closed:
            raise GalleryClosedError(f"Milvus gallery {self.uri} is closed")
        kwargs.setdefault("timeout", self.target.timeout)
        try:
            with calling(self.target, what):
                return fn(*args, **kwargs)
        except MilvusUnavailableError as exc:
            if "not loaded" not in str(exc):
                raise
        with calling(self.target, "load the collections"):
            for name in (self.meta_name, self.name):
                self.client.load_collection(name, timeout=max(self.target.timeout, 30.0))
        with calling(self.target, what):
            return fn(*args, **kwargs)

    def visible(self, extra: str = "") -> str:
        """A filter of the rows readers may see (unfinished writes hidden) and ``extra``."""
        hide = self.records.hide(self.records.open_writes())
        return " and ".join(p for p in (hide, extra) if p) or "id >= 0"

    def scan(self, expr: str, fields: list[str], batch: int = 4096, what: str = "read templates"):
        """Batches (lists of row dicts) of every row matching ``expr``: an iterator past
        Milvus's 16,384-row query window."""
        it = self.call(what, self.client.query_iterator, self.name, batch_size=batch, filter=expr,
                       output_fields=fields, consistency_level=self.consistency)
        try:
            while True:
                with calling(self.target, what):
                    rows = it.next()
                if not rows:
                    return
                yield rows
        finally:
            it.close()

    def query(self, expr: str, fields: list[str], what: str = "read templates") -> list[dict]:
        """Every row matching ``expr``."""
        return [r for rows in self.scan(expr, fields, what=what) for r in rows]

    def count(self, expr: str) -> int:
        rows = self.call("count", self.client.query, self.name, filter=expr,
                         output_fields=["count(*)"], consistency_level=self.consistency)
        return int(rows[0]["count(*)"]) if rows else 0

    def fence(self) -> None:
        """Make this client's next Session reads see its deletes: Milvus 2.3 answers a
        delete with timestamp 0, so pymilvus's session timestamp does not move; an upsert of
        a one-row fence record gets a fresh timestamp (from the same oracle), which is then
        taken as the last write of both collections."""
        self.call("write the fence record", self.client.upsert, self.meta_name,
                  [{"key": "fence", "value": {}, "vec": [1.0, 0.0]}])
        try:
            from pymilvus.client import ts_utils

            conn = self.client._get_connection()
            ts = ts_utils.get_collection_ts(self.meta_name, conn.server_address, "")
            if ts:
                ts_utils.update_collection_ts(self.name, ts, conn.server_address, "")
        except (ImportError, AttributeError):  # another pymilvus: reads fall back to Strong
            self.target.consistency = "Strong"
