""":class:`MilvusGallery`: the gallery protocol on a Milvus collection (server, cluster or
Milvus Lite). Semantics are in the package docstring (:mod:`megaclass.gallery.milvus`)."""

from __future__ import annotations

import hashlib
import logging
import secrets
import sqlite3
from pathlib import Path

import numpy as np

from ...errors import (
    ConfigError,
    GalleryClosedError,
    ModelMismatchError,
    ReadOnlyGalleryError,
    UnknownLabelError,
)
from ..gallery import Match
from ..vectors import as_rows, as_unit_vectors, unit_rows
from . import schema
from .connect import MilvusTarget, calling, connect, local_folder, parse_uri
from .errors import MilvusKeyError, NotAMilvusGalleryError
from .link import Link
from .records import MARKER, lit
from .validate import check_label, check_meta, enroll_items
from .writes import MODEL_KEY, JournaledWrites

# Milvus 2.3 servers lack the iterator's MVCC timestamp; pymilvus then warns on every
# scan and uses its own timestamp, which is what the scans here want anyway.
logging.getLogger("pymilvus.client.iterator.query_iterator").setLevel(logging.ERROR)

DDL_TIMEOUT = 120.0  # s: creating and loading a collection (seconds on a busy server)
MAX_FETCH = 16384  # Milvus's topk limit
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
        self.link = Link(target, client, version)  # connection and shared reads
        self._writes = JournaledWrites(self.link)
        self._dim, self._salt, self._read_only = dim, salt, read_only
        self.name, self.meta_name, self.records = self.link.name, self.link.meta_name, self.link.records
        self.server_version = version
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
        g.link.search_params = g.records.setting("milvus_search_params", {}) or {}
        if not read_only:
            g.recover(expired_only=True)
        return g

    def close(self) -> None:
        """Release the connection; idempotent. Writes were durable when they returned."""
        with self.link.lock:
            if not self.link.closed:
                self.link.close()

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
        return self.link.uri

    def check_writable(self) -> None:
        """Raise unless writes are allowed (open, not read-only)."""
        if self.link.closed:
            raise GalleryClosedError(f"Milvus gallery {self.uri} is closed")
        if self._read_only:
            raise ReadOnlyGalleryError(f"Milvus gallery {self.uri} was opened read-only")

    # ------------------------------------------------------------------ reads
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
        expr = self.link.visible(extra)
        out: list[list[Match]] = [[] for _ in range(len(q))]
        todo, fetch = list(range(len(q))), min(MAX_FETCH, max(4 * k, k + 16))
        while todo:
            res = self.link.call("search", self.link.client.search, self.name, data=q[todo].tolist(),
                                 limit=fetch, filter=expr, output_fields=["label"],
                                 search_params={"metric_type": "IP", "params": self._params(fetch)},
                                 consistency_level=self.link.consistency)
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

    def _params(self, fetch: int) -> dict:
        """The search knob for a search of ``fetch`` results: HNSW's ``ef`` must be at
        least the results asked for (Milvus refuses the search otherwise)."""
        params = dict(self.link.search_params)
        if "ef" in params:
            params["ef"] = max(int(params["ef"]), fetch)
        return params

    def templates(self, label: str) -> np.ndarray:
        expr = self.link.visible(f"label == {lit(check_label(label))}")
        rows = self.link.query(expr, ["vector", "w", "seq"])
        if not rows:
            raise UnknownLabelError(f"label {label!r} is not enrolled")
        rows.sort(key=lambda r: (r["w"], r["seq"]))
        return unit_rows(np.asarray([r["vector"] for r in rows], np.float32))

    def labels(self) -> list[str]:
        rows = self.link.query(self.link.visible("head == true"), ["label", "w", "seq"])
        return [r["label"] for r in sorted(rows, key=lambda r: (r["w"], r["seq"]))]

    def class_meta(self, label: str) -> dict:
        expr = self.link.visible(f"label == {lit(check_label(label))} and head == true")
        rows = self.link.call("read a class", self.link.client.query, self.name, filter=expr,
                              output_fields=["meta"], limit=1, consistency_level=self.link.consistency)
        if not rows:
            raise UnknownLabelError(f"label {label!r} is not enrolled")
        return dict(rows[0]["meta"] or {})

    def __len__(self) -> int:
        return self.link.count(self.link.visible("head == true"))

    def __contains__(self, label) -> bool:
        if not isinstance(label, str) or not label:
            return False
        return self.link.count(self.link.visible(f"label == {lit(label)} and head == true")) > 0

    @property
    def num_templates(self) -> int:
        return self.link.count(self.link.visible())

    @property
    def model(self) -> str | None:
        return self.records.setting(MODEL_KEY)

    # ------------------------------------------------------------------ settings
    def get_setting(self, key: str, default=None):
        check_label(key, "setting key")
        return self.records.setting(key, default)

    def set_setting(self, key: str, value) -> None:
        self.check_writable()
        check_label(key, "setting key")
        if key in _RESERVED:
            raise ConfigError(f"setting {key!r} is reserved by the Milvus gallery")
        check_meta({"v": value}, what=f"setting {key!r}")
        with self.link.lock:
            self.records.set_setting(key, value)

    def settings(self) -> dict:
        """Every setting kept with :meth:`set_setting` (the backend's own left out)."""
        return {k: v for k, v in self.records.settings().items() if k not in _RESERVED}

    def erased_tag(self, label: str) -> str:
        return "erased:" + hashlib.sha256((self._salt + check_label(label)).encode()).hexdigest()[:32]

    # ------------------------------------------------------------------ writes
    def enroll(self, label: str, vectors, meta: dict | None = None, *, replace: bool = False) -> int:
        """Enroll one class (all templates or none); see :meth:`enroll_many`."""
        return self.enroll_many([(label, vectors, meta)], replace=replace)

    def enroll_many(self, items, *, replace: bool = False) -> int:
        """Enroll ``(label, vectors[, meta])`` items as one journaled write."""
        self.check_writable()
        labels, vecs, counts, metas = enroll_items(items, self._dim)
        if not labels:
            return 0
        with self.link.lock:
            return self._writes.enroll(labels, vecs, counts, metas, replace)

    def add_templates(self, label: str, vectors) -> int:
        """Add templates to an enrolled class (UnknownLabelError if it is not)."""
        self.check_writable()
        label = check_label(label)
        vecs = unit_rows(as_rows(vectors, self._dim))
        with self.link.lock:
            return self._writes.add(label, vecs, self.class_meta(label))

    def erase(self, label: str) -> int:
        """Remove a class: hidden at once (journal), its rows deleted; :meth:`compact` makes
        the deletion final in Milvus's storage."""
        self.check_writable()
        label = check_label(label)
        with self.link.lock:
            return self._writes.erase(label)

    def recover(self, *, expired_only: bool = False) -> list[int]:
        """Finish or roll back writes left open by a crash (all of them, or only those whose
        lease expired: writers that are surely gone). Returns the write ids handled."""
        self.check_writable()
        with self.link.lock:
            return self._writes.recover(expired_only)

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

        kind = self.link.call("describe the index", self.link.client.describe_index, self.name,
                              "vector").get("index_type")
        if kind not in KNOBS:
            return {}
        name, values = KNOBS[kind]
        return {"knob": name, "value": int(self.link.search_params.get(name, values[0])), "limit": values[-1]}

    def set_search_knobs(self, **knobs: int) -> None:
        """Hold the search at these knobs (``ef`` / ``nprobe``) in this client until the
        next :meth:`tune`: for measuring at equal recall (``megaclass bench gallery``)."""
        bad = set(knobs) - {"ef", "nprobe"}
        if bad or not all(type(v) is int and v >= 1 for v in knobs.values()):
            raise ConfigError(f"search knobs are ef= / nprobe= ints >= 1, got {knobs!r}")
        self.link.search_params = dict(knobs)

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
        return f"MilvusGallery({self.uri!r}, dim={self._dim}{', closed' if self.link.closed else ''})"
