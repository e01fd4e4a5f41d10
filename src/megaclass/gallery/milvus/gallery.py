""":class:`MilvusGallery`: the gallery protocol on a Milvus collection (server, cluster or
Milvus Lite). Semantics are in the package docstring (:mod:`megaclass.gallery.milvus`)."""

from __future__ import annotations

import hashlib
import logging
import secrets
import sqlite3
import threading
import time
from pathlib import Path

import numpy as np

from ...errors import (
    ConfigError,
    DuplicateLabelError,
    GalleryClosedError,
    ModelMismatchError,
    ReadOnlyGalleryError,
    UnknownLabelError,
)
from ..gallery import Match
from ..vectors import as_rows, as_unit_vectors, unit_rows
from . import schema
from .connect import MilvusTarget, calling, connect, local_folder, parse_uri
from .errors import MilvusKeyError, MilvusUnavailableError, NotAMilvusGalleryError
from .records import MARKER, Records, lit, lits
from .validate import check_label, check_meta, enroll_items

# Milvus 2.3 servers lack the iterator's MVCC timestamp; pymilvus then warns on every
# scan and uses its own timestamp, which is what the scans here want anyway.
logging.getLogger("pymilvus.client.iterator.query_iterator").setLevel(logging.ERROR)

INSERT_ROWS = 2000  # rows per insert request (well under gRPC's 64 MiB at dim 4096)
DDL_TIMEOUT = 120.0  # s: creating and loading a collection (seconds on a busy server)
MAX_FETCH = 16384  # Milvus's topk limit
MODEL_KEY = "model_fingerprint"
_RESERVED = frozenset({"milvus_index", "milvus_search_params", "milvus_recall"})


class MilvusGallery:
    """Classes with templates in a Milvus collection, searched by class.

    Examples
    --------
    >>> g = MilvusGallery.open("milvus-lite://./reg.db", dim=128)       # doctest: +SKIP
    >>> g.enroll("alice", vectors); g.search(queries, k=5)              # doctest: +SKIP
    """

    def __init__(self, target: MilvusTarget, client, version: str, dim: int, salt: str,
                 read_only: bool = False):
        self._t, self._client, self.server_version = target, client, version
        self._dim, self._salt, self._read_only = dim, salt, read_only
        self.name, self.meta_name = target.collection, target.collection + schema.META_SUFFIX
        self.records = Records(client, self.meta_name, self._call, target.consistency)
        self._lock = threading.RLock()
        self._closed = False
        self._unresolved: set[int] = set()
        self._last_w = 0
        self._search_params: dict = {}
        self._path = local_folder(target)

    # ------------------------------------------------------------------ open / close
    @classmethod
    def open(cls, uri: str, *, dim: int | None = None, create: bool = True, key=None,
             token: str | None = None, read_only: bool = False) -> MilvusGallery:
        """Open (or create, with ``dim``) the gallery named by ``uri``; see :mod:`.connect`."""
        if key is not None:
            raise MilvusKeyError("a Milvus gallery stores templates in Milvus, which keeps vectors in "
                                 "clear: encryption at rest is the storage layer's (encrypted disks / "
                                 "object store); drop --key-file / key= for milvus:// galleries")
        target = parse_uri(uri, token)
        client, version = connect(target)
        try:
            return cls._attach(target, client, version, dim, create, read_only)
        except BaseException:
            client.close()
            raise

    @classmethod
    def _attach(cls, t, client, version, dim, create, read_only) -> MilvusGallery:
        meta_name, tout = t.collection + schema.META_SUFFIX, max(t.timeout, DDL_TIMEOUT)
        with calling(t, "describe the collections"):
            have = client.has_collection(t.collection, timeout=tout)
            have_meta = client.has_collection(meta_name, timeout=tout)
        if have and not have_meta:
            with calling(t, "describe the collection"):
                schema.check_layout(client, t.collection, t.where, tout, None)
            raise NotAMilvusGalleryError(f"Milvus collection {t.collection!r} at {t.where} has no "
                                         "megaclass records: refused, left unchanged")
        marker = None
        if have_meta:
            with calling(t, "read the gallery marker"):
                schema.check_meta_layout(client, meta_name, t.where, tout)
                client.load_collection(meta_name, timeout=tout)
                rows = client.query(meta_name, filter=f"key == {lit(MARKER)}", output_fields=["value"],
                                    consistency_level="Strong", timeout=tout)
            marker = rows[0]["value"] if rows else None
            if not marker or marker.get("format") != schema.FORMAT:
                raise NotAMilvusGalleryError(f"Milvus collection {meta_name!r} at {t.where} holds no "
                                             "megaclass marker: refused, left unchanged")
            if dim is not None and dim != marker["dim"]:
                from ...errors import DimensionMismatchError
                raise DimensionMismatchError(f"Milvus gallery {t.collection!r} at {t.where} has dim "
                                             f"{marker['dim']}, got dim={dim}: refused, left unchanged")
        elif not create or read_only:
            raise ConfigError(f"no gallery {t.collection!r} at {t.where} (create=False or read_only)")
        elif dim is None or type(dim) is not int or dim < 1:
            raise ConfigError(f"creating Milvus gallery {t.collection!r} needs a positive int dim")
        with calling(t, "create the gallery"):
            if marker is None:
                schema.index_params(t.index)  # validate before creating anything
                schema.create_meta(client, meta_name, tout)
                marker = {"format": schema.FORMAT, "version": schema.VERSION, "dim": dim,
                          "salt": secrets.token_hex(16), "index": t.index}
                client.insert(meta_name, [{"key": MARKER, "value": marker, "vec": [1.0, 0.0]}],
                              timeout=tout)
            if not client.has_collection(t.collection, timeout=tout):  # new, or creation cut short
                schema.create(client, t.collection, marker["dim"], marker.get("index", "auto"), tout)
            schema.check_layout(client, t.collection, t.where, tout, marker["dim"])
            client.load_collection(t.collection, timeout=tout)
        g = cls(t, client, version, int(marker["dim"]), marker["salt"], read_only)
        g._search_params = g.records.setting("milvus_search_params", {}) or {}
        if not read_only:
            g.recover(expired_only=True)
        return g

    def close(self) -> None:
        """Release the connection; idempotent. Writes were durable when they returned."""
        with self._lock:
            if not self._closed:
                self._closed = True
                try:
                    self._client.close()
                except Exception:  # noqa: BLE001 - closing a dead connection
                    pass

    def __enter__(self) -> MilvusGallery:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------------ basics
    @property
    def path(self) -> Path:
        """The local side folder: the service keeps its API keys and audit log there, in a
        ``gallery.db`` of its own tables only (templates stay in Milvus)."""
        if not (self._path / "gallery.db").exists():
            self._path.mkdir(parents=True, exist_ok=True)
            sqlite3.connect(self._path / "gallery.db").close()  # an empty database file
        return self._path

    @property
    def dim(self) -> int:
        return self._dim

    @property
    def read_only(self) -> bool:
        return self._read_only

    @property
    def uri(self) -> str:
        return self._t.redacted()

    def _call(self, what: str, fn, *args, **kwargs):
        if self._closed:
            raise GalleryClosedError(f"Milvus gallery {self.uri} is closed")
        kwargs.setdefault("timeout", self._t.timeout)
        try:
            with calling(self._t, what):
                return fn(*args, **kwargs)
        except MilvusUnavailableError as exc:
            if "not loaded" not in str(exc):
                raise
        # a restarted server may not have reloaded the collections yet: ask it to, once
        with calling(self._t, "load the collections"):
            for name in (self.meta_name, self.name):
                self._client.load_collection(name, timeout=max(self._t.timeout, 30.0))
        with calling(self._t, what):
            return fn(*args, **kwargs)

    def _writable(self) -> None:
        if self._closed:
            raise GalleryClosedError(f"Milvus gallery {self.uri} is closed")
        if self._read_only:
            raise ReadOnlyGalleryError(f"Milvus gallery {self.uri} was opened read-only")

    def _fence(self) -> None:
        """Make this client's next Session reads see its deletes: Milvus 2.3 answers a
        delete with timestamp 0, so pymilvus's session timestamp does not move; an upsert of
        a one-row fence record gets a fresh timestamp (from the same oracle), which is then
        taken as the last write of both collections."""
        self._call("write the fence record", self._client.upsert, self.meta_name,
                   [{"key": "fence", "value": {}, "vec": [1.0, 0.0]}])
        try:
            from pymilvus.client import ts_utils

            conn = self._client._get_connection()
            ts = ts_utils.get_collection_ts(self.meta_name, conn.server_address, "")
            if ts:
                ts_utils.update_collection_ts(self.name, ts, conn.server_address, "")
        except (ImportError, AttributeError):  # another pymilvus: reads fall back to Strong
            self._t.consistency = "Strong"

    def _new_w(self) -> int:
        self._last_w = max(time.time_ns(), self._last_w + 1)
        return self._last_w

    # ------------------------------------------------------------------ reads
    def _visible(self, extra: str = "") -> str:
        hide = self.records.hide(self.records.open_writes())
        return " and ".join(p for p in (hide, extra) if p) or "id >= 0"

    def _query(self, expr: str, fields: list[str], what: str = "read templates") -> list[dict]:
        """Every row matching ``expr`` (an iterator past Milvus's 16,384-row query window)."""
        it = self._call(what, self._client.query_iterator, self.name, batch_size=4096, filter=expr,
                        output_fields=fields, consistency_level=self._t.consistency)
        out: list[dict] = []
        try:
            while True:
                with calling(self._t, what):
                    batch = it.next()
                if not batch:
                    return out
                out.extend(batch)
        finally:
            it.close()

    def _count(self, expr: str) -> int:
        rows = self._call("count", self._client.query, self.name, filter=expr,
                          output_fields=["count(*)"], consistency_level=self._t.consistency)
        return int(rows[0]["count(*)"]) if rows else 0

    def search(self, vectors, k: int = 5, *, where: dict | None = None,
               model: str | None = None) -> list[list[Match]]:
        """Best ``k`` distinct classes per query, each scored by its best template."""
        if type(k) is not int or k < 1:
            raise ConfigError(f"k must be an int >= 1, got {k!r}")
        q = as_unit_vectors(vectors, self._dim, allow_empty=True)
        extra = " and ".join(f"meta[{lit(key)}] == {lit(v)}" for key, v in check_meta(where).items())
        if model is not None:
            have = self.model
            if have not in (None, model):
                raise ModelMismatchError(f"gallery {self.uri} holds templates of model {have}, the "
                                         f"queries come from model {model}: load the gallery's model")
        if not len(q):
            return []
        expr = self._visible(extra)
        out: list[list[Match]] = [[] for _ in range(len(q))]
        todo, fetch = list(range(len(q))), min(MAX_FETCH, max(4 * k, k + 16))
        while todo:
            res = self._call("search", self._client.search, self.name, data=q[todo].tolist(),
                             limit=fetch, filter=expr, output_fields=["label"],
                             search_params={"metric_type": "IP", "params": self._search_params},
                             consistency_level=self._t.consistency)
            again = []
            for qi, hits in zip(todo, res, strict=True):
                best: dict[str, float] = {}
                for h in hits:  # best first: the first hit of a class is its score
                    best.setdefault(h["entity"]["label"], float(h["distance"]))
                if len(best) < k and len(hits) == fetch and fetch < MAX_FETCH:
                    again.append(qi)  # a few classes hold many templates: look deeper
                out[qi] = [Match(lb, min(1.0, max(-1.0, s))) for lb, s in list(best.items())[:k]]
            todo, fetch = again, min(MAX_FETCH, fetch * 4)
        return out

    def templates(self, label: str) -> np.ndarray:
        rows = self._query(self._visible(f"label == {lit(check_label(label))}"), ["vector", "w", "seq"])
        if not rows:
            raise UnknownLabelError(f"label {label!r} is not enrolled")
        rows.sort(key=lambda r: (r["w"], r["seq"]))
        return unit_rows(np.asarray([r["vector"] for r in rows], np.float32))

    def labels(self) -> list[str]:
        rows = self._query(self._visible("head == true"), ["label", "w", "seq"])
        return [r["label"] for r in sorted(rows, key=lambda r: (r["w"], r["seq"]))]

    def class_meta(self, label: str) -> dict:
        rows = self._call("read a class", self._client.query, self.name,
                          filter=self._visible(f"label == {lit(check_label(label))} and head == true"),
                          output_fields=["meta"], limit=1, consistency_level=self._t.consistency)
        if not rows:
            raise UnknownLabelError(f"label {label!r} is not enrolled")
        return dict(rows[0]["meta"] or {})

    def __len__(self) -> int:
        return self._count(self._visible("head == true"))

    def __contains__(self, label) -> bool:
        if not isinstance(label, str) or not label:
            return False
        return self._count(self._visible(f"label == {lit(label)} and head == true")) > 0

    @property
    def num_templates(self) -> int:
        return self._count(self._visible())

    @property
    def model(self) -> str | None:
        return self.records.setting(MODEL_KEY)

    # ------------------------------------------------------------------ settings
    def get_setting(self, key: str, default=None):
        check_label(key, "setting key")
        return self.records.setting(key, default)

    def set_setting(self, key: str, value) -> None:
        self._writable()
        check_label(key, "setting key")
        if key in _RESERVED:
            raise ConfigError(f"setting {key!r} is reserved by the Milvus gallery")
        check_meta({"v": value}, what=f"setting {key!r}")
        with self._lock:
            self.records.set_setting(key, value)

    def erased_tag(self, label: str) -> str:
        return "erased:" + hashlib.sha256((self._salt + check_label(label)).encode()).hexdigest()[:32]

    # ------------------------------------------------------------------ writes
    def enroll(self, label: str, vectors, meta: dict | None = None, *, replace: bool = False) -> int:
        """Enroll one class (all templates or none); see :meth:`enroll_many`."""
        return self.enroll_many([(label, vectors, meta)], replace=replace)

    def enroll_many(self, items, *, replace: bool = False) -> int:
        """Enroll ``(label, vectors[, meta])`` items as one journaled write."""
        self._writable()
        labels, vecs, counts, metas = enroll_items(items, self._dim)
        if not labels:
            return 0
        with self._lock:
            self._resolve_own()
            present = self._present(labels)
            if present and not replace:
                raise DuplicateLabelError(f"label {present[0]!r} is already enrolled "
                                          f"({len(present)} of the batch; use replace=True)")
            owner = np.repeat(np.arange(len(labels)), counts)
            first = np.concatenate([[0], np.cumsum(counts)[:-1]])
            rows = [(labels[c], metas[c], i == first[c]) for i, c in enumerate(owner.tolist())]
            self._write(labels, vecs, rows, replaced=present)
            return int(len(vecs))

    def add_templates(self, label: str, vectors) -> int:
        """Add templates to an enrolled class (UnknownLabelError if it is not)."""
        self._writable()
        label = check_label(label)
        vecs = unit_rows(as_rows(vectors, self._dim))
        with self._lock:
            self._resolve_own()
            meta = self.class_meta(label)
            self._write([label], vecs, [(label, meta, False)] * len(vecs), replaced=[])
            return int(len(vecs))

    def erase(self, label: str) -> int:
        """Remove a class: hidden at once (journal), its rows deleted; :meth:`compact` makes
        the deletion final in Milvus's storage."""
        self._writable()
        label = check_label(label)
        with self._lock:
            self._resolve_own()
            n = self._count(self._visible(f"label == {lit(label)}"))
            if not n:
                raise UnknownLabelError(f"label {label!r} is not enrolled")
            w = self._new_w()
            try:
                self.records.mark_commit(w, [label], keep=0)  # hidden from here on
            except Exception:
                self._unresolved.add(w)
                raise
            self._finish(w, {"labels": [label], "keep": 0})
            return n

    def _present(self, labels: list[str]) -> list[str]:
        found: list[str] = []
        for i in range(0, len(labels), 1000):
            chunk = labels[i:i + 1000]
            rows = self._query(self._visible(f"head == true and label in {lits(chunk)}"), ["label"])
            found += [r["label"] for r in rows]
        return found

    def _write(self, labels, vecs, rows, replaced) -> int:
        """Journal, insert, (commit and delete replaced rows), end: see :mod:`.records`."""
        w, model = self._new_w(), self.records.setting(MODEL_KEY) or ""
        self.records.begin(w, labels)
        try:
            for s in range(0, len(vecs), INSERT_ROWS):
                data = [{"label": lb, "vector": v, "meta": m, "model": model, "w": w, "seq": s + j,
                         "head": bool(h)}
                        for j, ((lb, m, h), v) in enumerate(zip(rows[s:s + INSERT_ROWS],
                                                                vecs[s:s + INSERT_ROWS].tolist(),
                                                                strict=True))]
                self._call("insert templates", self._client.insert, self.name, data)
            commit = None
            if replaced:
                commit = {"labels": list(replaced), "keep": w}
                self.records.mark_commit(w, commit["labels"], keep=w)
        except Exception as exc:
            self._rollback_or_remember(w, exc)
            raise
        self._finish(w, commit)
        return w

    def _finish(self, w: int, commit: dict | None) -> None:
        """Roll a committed write forward to its end (a failure leaves it for recovery)."""
        try:
            if commit is not None:
                self._call("delete rows", self._client.delete, self.name,
                           filter=f"label in {lits(commit['labels'])} and w != {int(commit['keep'])}")
            self.records.end(w)
            self._fence()
        except Exception as exc:
            if commit is not None:  # committed: readers see the new state; recovery finishes it
                self._unresolved.add(w)
                return
            self._rollback_or_remember(w, exc)
            raise

    def _rollback_or_remember(self, w: int, exc: Exception) -> None:
        """Undo a failed write now, or (server unreachable) remember it: it stays hidden and
        is rolled back by this client's next write."""
        if isinstance(exc, MilvusUnavailableError):  # do not wait a second timeout for nothing
            self._unresolved.add(w)
            return
        try:
            self._recover_one(w, None)
        except Exception:  # noqa: BLE001
            self._unresolved.add(w)

    def _recover_one(self, w: int, commit: dict | None) -> None:
        if commit is None:
            self._call("roll back a write", self._client.delete, self.name, filter=f"w == {w}")
        else:
            self._call("finish a write", self._client.delete, self.name,
                       filter=f"label in {lits(commit['labels'])} and w != {int(commit['keep'])}")
        self.records.end(w)
        self._fence()

    def _resolve_own(self) -> None:
        if self._unresolved:
            writes = self.records.open_writes()
            for w in sorted(self._unresolved):
                if w in writes:
                    self._recover_one(w, writes[w]["commit"])
                self._unresolved.discard(w)

    def recover(self, *, expired_only: bool = False) -> list[int]:
        """Finish or roll back writes left open by a crash (all of them, or only those whose
        lease expired: writers that are surely gone). Returns the write ids handled."""
        self._writable()
        with self._lock:
            done = []
            for w, e in sorted(self.records.open_writes().items()):
                if expired_only and e["commit"] is None and e["expires"] > time.time():
                    continue
                self._recover_one(w, e["commit"])
                done.append(w)
            return done

    # ------------------------------------------------------------------ operations
    def stats(self) -> dict:
        from .ops import stats
        return stats(self)

    def check(self) -> dict:
        from .ops import check
        return check(self)

    def compact(self, timeout: float = 300.0) -> dict:
        from .ops import compact
        return compact(self, timeout)

    def tune(self, queries=None, *, index: str | None = None, target: float = 0.99) -> dict:
        from .tune import tune
        return tune(self, queries, index=index, target=target)

    def search_knobs(self) -> dict:
        """The index's search knob as ``{"knob", "value", "limit"}`` (``{}`` for FLAT)."""
        from .tune import KNOBS

        kind = self._call("describe the index", self._client.describe_index, self.name,
                          "vector").get("index_type")
        if kind not in KNOBS:
            return {}
        name, values = KNOBS[kind]
        return {"knob": name, "value": int(self._search_params.get(name, values[0])), "limit": values[-1]}

    def set_search_knobs(self, **knobs: int) -> None:
        """Hold the search at these knobs (``ef`` / ``nprobe``) in this client until the
        next :meth:`tune`: for measuring at equal recall (``megaclass bench gallery``)."""
        bad = set(knobs) - {"ef", "nprobe"}
        if bad or not all(type(v) is int and v >= 1 for v in knobs.values()):
            raise ConfigError(f"search knobs are ef= / nprobe= ints >= 1, got {knobs!r}")
        self._search_params = dict(knobs)

    def iter_classes(self, batch: int = 1000):
        from .ops import iter_classes
        return iter_classes(self, batch)

    def export(self, out) -> Path:
        from .ops import export
        return export(self, out)

    @classmethod
    def import_from(cls, export_dir, path, *, key=None) -> MilvusGallery:
        from .ops import import_into
        return import_into(cls, export_dir, path, key=key)

    def __repr__(self) -> str:
        return f"MilvusGallery({self.uri!r}, dim={self._dim}{', closed' if self._closed else ''})"
