"""SQLite layer of a gallery: the source of truth.

``gallery.db`` (WAL mode) holds four tables:

* ``meta``: key -> JSON value (``format_version``, ``dim``, ``uuid``, ``created_at`` and
  free settings stored by other code, e.g. a calibrated threshold);
* ``classes``: ``id``, ``label`` (UNIQUE), ``meta`` (JSON), ``created_at``, ``updated_at``;
* ``templates``: ``id``, ``class_id``, ``vector`` (float32 little-endian BLOB);
* ``ops``: append-only log of ``enroll`` / ``add`` / ``erase`` with a monotonic ``seq``.

Every write method here runs in ONE transaction (``BEGIN IMMEDIATE`` ... ``COMMIT``) and
rolls back on any error, so the store is either fully updated or untouched. Ids are
``AUTOINCREMENT`` and never reused, which keeps the derived FAISS index unambiguous.
Callers validate vectors (unit float32 rows); this module only persists them.

Creating and opening the file (schema, page size, pragmas, key check) is
:mod:`~megaclass.gallery.store_file`; what a write did is a
:class:`~megaclass.gallery.change.Change`; a template's stored bytes (float32, sealed with
the key) are :mod:`~megaclass.gallery.template_codec`; WAL checkpoints and compaction are
:mod:`~megaclass.gallery.wal`.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from pathlib import Path

import numpy as np

from ..errors import (
    DuplicateLabelError,
    NotAGalleryError,
    UnknownLabelError,
)
from . import provenance
from .change import Change
from .crypto import TemplateCipher
from .store_file import DB_NAME, closing_on_error, connect, create_db, open_db, utc_now, write_error
from .template_codec import TemplateCodec
from .wal import truncate_wal, vacuum

__all__ = ["DB_NAME", "RESERVED_KEYS", "Change", "Store", "erased_tag"]

RESERVED_KEYS = frozenset({"format_version", "dim", "uuid", "created_at", "encryption",
                           "recall_monitor", "recall_sample_rate", "query_reservoir"})  # gallery/recall.py

_NO_IDS = np.empty(0, dtype=np.int64)


class Store:
    """One open ``gallery.db``. Not thread-safe by itself: the Gallery holds a lock."""

    def __init__(self, conn: sqlite3.Connection, path: Path, cipher: TemplateCipher | None = None, *,
                 writer: bool = False):
        self._conn = conn
        self.path = path
        self.cipher = cipher
        self.dim: int = int(self.get_meta("dim"))
        self.uuid: str = str(self.get_meta("uuid"))
        self.seq_before = self.seq_after = 0  # op seqs around the last write transaction
        self._checkpointer = None
        if writer:  # the connection that commits also gets the background WAL checkpoints
            from .wal import WalCheckpointer

            self._checkpointer = WalCheckpointer(path)

    # ------------------------------------------------------------------ open / create
    @classmethod
    def create(cls, directory: Path, dim: int, key: bytes | None = None) -> Store:
        """Create ``directory/gallery.db`` atomically and open it (see
        :func:`~megaclass.gallery.store_file.create_db`)."""
        return cls.open(create_db(directory, dim, key), key)

    @classmethod
    def open(cls, db_path: Path, key: bytes | None = None, *, read_only: bool = False) -> Store:
        """Open an existing ``gallery.db``; NotAGalleryError if it is not one.

        EncryptionKeyError if the gallery is encrypted and ``key`` is missing or wrong, or
        if a key is given for a gallery that stores templates in clear.
        """
        conn, cipher, immutable = open_db(db_path, key, read_only=read_only)
        with closing_on_error(conn, db_path):
            store = cls(conn, db_path, cipher, writer=not read_only)
        store.immutable = immutable
        return store

    def reader(self) -> Store:
        """A second, read-only connection to the same database (same key), e.g. for a
        background thread that reads while this one writes."""
        return type(self)(connect(self.path, "ro", immutable=self.immutable), self.path, self.cipher)

    #: opened with SQLite's ``immutable=1``: a read-only directory where the WAL's ``-shm``
    #: file cannot be created, so the file is read as it is (later writes by others, which
    #: need a writable directory anyway, are not seen)
    immutable = False

    def close(self) -> None:
        if self._checkpointer is not None:
            self._checkpointer.close()
            self._checkpointer = None
        self._conn.close()

    # ------------------------------------------------------------------ transactions
    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """``BEGIN IMMEDIATE`` ... ``COMMIT``; ``ROLLBACK`` on any exception.

        Records the op seq at the start (``seq_before``) and at the commit (``seq_after``),
        so the caller can tell whether another process wrote since it last looked.
        """
        try:
            self._conn.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as exc:
            raise write_error(exc, self.path) from None
        try:
            self.seq_before = self.last_seq()
            yield self._conn
            self.seq_after = self.last_seq()
        except sqlite3.OperationalError as exc:
            self._conn.execute("ROLLBACK")
            raise write_error(exc, self.path) from None
        except BaseException:
            self._conn.execute("ROLLBACK")
            raise
        try:
            self._conn.execute("COMMIT")
        except sqlite3.OperationalError as exc:
            if self._conn.in_transaction:
                self._conn.execute("ROLLBACK")
            raise write_error(exc, self.path) from None
        if self._checkpointer is not None:
            self._checkpointer.poke()

    @contextmanager
    def reading(self) -> Iterator[None]:
        """A read transaction: several reads see one consistent state (WAL snapshot)."""
        self._conn.execute("BEGIN")
        try:
            yield
        finally:
            self._conn.execute("COMMIT")

    # ------------------------------------------------------------------ meta
    def get_meta(self, key: str, default=None):
        row = self._conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return default if row is None else json.loads(row[0])

    def set_meta(self, key: str, value) -> None:
        text = json.dumps(value, allow_nan=False)  # caller turns errors into typed ones
        with self.transaction() as c:
            c.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, text))

    # ------------------------------------------------------------------ reads
    def last_seq(self) -> int:
        return int(self._conn.execute("SELECT COALESCE(MAX(seq), 0) FROM ops").fetchone()[0])

    def class_rows(self, chunk: int = 1 << 16) -> Iterator[list[tuple[int, str]]]:
        """All ``(class id, label)`` rows in id order, in chunks."""
        cur = self._conn.execute("SELECT id, label FROM classes ORDER BY id")
        while rows := cur.fetchmany(chunk):
            yield rows

    def classes_where(self, where: dict) -> np.ndarray:
        """Ids of classes whose meta JSON has every key/value pair of ``where``."""
        sql = "SELECT id FROM classes WHERE " + " AND ".join(
            "json_extract(meta, ?) = json_extract(?, '$')" for _ in where)
        args: list = []
        for key, value in where.items():
            args += ["$." + json.dumps(str(key)), json.dumps(value)]
        rows = self._conn.execute(sql, args).fetchall()
        return np.asarray([r[0] for r in rows], dtype=np.int64)

    def class_id(self, label: str) -> int | None:
        row = self._conn.execute("SELECT id FROM classes WHERE label = ?", (label,)).fetchone()
        return None if row is None else int(row[0])

    def class_meta(self, label: str) -> dict:
        row = self._conn.execute("SELECT meta FROM classes WHERE label = ?", (label,)).fetchone()
        if row is None:
            raise UnknownLabelError(f"unknown label {label!r}")
        return json.loads(row[0])

    def class_templates(self, label: str) -> np.ndarray:
        cid = self.class_id(label)
        if cid is None:
            raise UnknownLabelError(f"unknown label {label!r}")
        rows = self._conn.execute(
            "SELECT id, vector FROM templates WHERE class_id = ? ORDER BY id", (cid,)).fetchall()
        return self.codec.decode([r[0] for r in rows], [r[1] for r in rows])

    def class_count(self) -> int:
        return int(self._conn.execute("SELECT COUNT(*) FROM classes").fetchone()[0])

    def template_count(self) -> int:
        return int(self._conn.execute("SELECT COUNT(*) FROM templates").fetchone()[0])

    def template_classes(self, chunk: int = 1 << 16) -> tuple[np.ndarray, np.ndarray]:
        """All (template ids, class ids) as int64 arrays, read in chunks."""
        cur = self._conn.execute("SELECT id, class_id FROM templates ORDER BY id")
        parts = []
        while rows := cur.fetchmany(chunk):
            parts.append(np.asarray(rows, dtype=np.int64))
        if not parts:
            return _NO_IDS, _NO_IDS
        arr = np.concatenate(parts)
        return arr[:, 0].copy(), arr[:, 1].copy()

    def iter_templates(self, chunk: int = 1 << 14) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Yield ``(template ids, vectors (n, dim) float32)`` chunks in id order."""
        cur = self._conn.execute("SELECT id, vector FROM templates ORDER BY id")
        while rows := cur.fetchmany(chunk):
            ids = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
            yield ids, self.codec.decode(ids.tolist(), [r[1] for r in rows])

    def templates_by_ids(self, ids: np.ndarray) -> np.ndarray:
        """Vectors of the given template ids, in the order given (all must exist)."""
        rows = dict(self._in_chunks(self._conn, "SELECT id, vector FROM templates WHERE id IN ({})",
                                    [int(i) for i in ids]))
        if len(rows) != len(ids):
            raise NotAGalleryError(f"{self.path}: templates vanished while reading")
        keys = [int(i) for i in ids]
        return self.codec.decode(keys, [rows[i] for i in keys])

    def disk_bytes(self) -> int:
        d = self.path.parent
        return sum(p.stat().st_size for p in d.iterdir() if p.is_file())

    # ------------------------------------------------------------------ writes
    @staticmethod
    def _next_id(c: sqlite3.Connection, table: str) -> int:
        """Next AUTOINCREMENT id of ``table`` (ids are never reused, even after deletes)."""
        row = c.execute("SELECT seq FROM sqlite_sequence WHERE name = ?", (table,)).fetchone()
        top = c.execute(f"SELECT COALESCE(MAX(id), 0) FROM {table}").fetchone()[0]
        return max(int(row[0]) if row else 0, int(top)) + 1

    @staticmethod
    def _in_chunks(c: sqlite3.Connection, sql: str, keys: list) -> Iterator[tuple]:
        """Run ``sql`` (with one ``{}`` for a ``?, ?, ...`` list) over ``keys`` in chunks."""
        for i in range(0, len(keys), 500):
            part = keys[i: i + 500]
            yield from c.execute(sql.format(", ".join("?" * len(part))), part)

    def _template_rows(self, ids: np.ndarray, cids: np.ndarray, vecs: np.ndarray,
                       model: int) -> Iterator[tuple]:
        """``(id, class id, blob, model)`` rows: blobs sealed with the key when there is one."""
        return zip(ids.tolist(), cids.tolist(), self.codec.encode(ids, vecs),
                   [model] * len(ids), strict=True)

    @property
    def codec(self) -> TemplateCodec:
        """How templates are stored, at the current ``dim`` (a re-embed's switch to a model of
        another dim changes it under an open store: see ``GalleryState.load_locked``)."""
        return TemplateCodec(self.dim, self.uuid, self.cipher, where=str(self.path))

    @property
    def connection(self) -> sqlite3.Connection:
        """The SQLite connection, for the gallery's side modules (:mod:`.provenance`,
        :mod:`.reembed`) that keep their own tables in the same database and commits."""
        return self._conn

    def template_models(self) -> dict[str, int]:
        """Live templates per model fingerprint (see :mod:`.provenance`)."""
        return provenance.template_models(self._conn)

    def enroll(self, labels: list[str], counts: np.ndarray, vectors: np.ndarray, metas: list[dict],
               replace: bool, on_ids=None) -> Change:
        """Insert (or with ``replace`` swap) classes; DuplicateLabelError rolls back all.

        Class ``labels[i]`` gets the next ``counts[i]`` rows of ``vectors`` (validated unit
        float32 rows) and ``metas[i]`` (JSON-able). Labels are distinct. ``on_ids(template
        ids)`` is called inside the transaction once the new ids are known, before the rows
        are written (the gallery starts indexing them meanwhile; the commit may still fail).
        """
        counts = np.asarray(counts, dtype=np.int64)
        with self.transaction() as c:
            now = utc_now()
            existing = dict(self._in_chunks(
                c, "SELECT label, id FROM classes WHERE label IN ({})", labels))
            if existing and not replace:
                dup = next(label for label in labels if label in existing)
                raise DuplicateLabelError(
                    f"label {dup!r} is already enrolled (use replace=True)")
            removed = _NO_IDS
            if existing:
                removed = np.asarray([r[0] for r in self._in_chunks(
                    c, "SELECT id FROM templates WHERE class_id IN ({})", list(existing.values()))],
                    dtype=np.int64)
            next_cid, next_tid = self._next_id(c, "classes"), self._next_id(c, "templates")
            cids = np.empty(len(labels), dtype=np.int64)
            new_rows, updates = [], []
            for i, (label, meta) in enumerate(zip(labels, metas, strict=True)):
                text = json.dumps(meta) if meta else "{}"
                cid = existing.get(label)
                if cid is None:
                    cid, next_cid = next_cid, next_cid + 1
                    new_rows.append((cid, label, text, now, now))
                else:
                    updates.append((text, now, cid))
                cids[i] = cid
            c.executemany("DELETE FROM templates WHERE class_id = ?", [(u[2],) for u in updates])
            c.executemany("UPDATE classes SET meta = ?, updated_at = ? WHERE id = ?", updates)
            c.executemany("INSERT INTO classes (id, label, meta, created_at, updated_at) "
                          "VALUES (?, ?, ?, ?, ?)", new_rows)
            tids = np.arange(next_tid, next_tid + len(vectors), dtype=np.int64)
            owner = np.repeat(cids, counts)
            if on_ids is not None:
                on_ids(tids)
            c.executemany("INSERT INTO templates (id, class_id, vector, model) VALUES (?, ?, ?, ?)",
                          self._template_rows(tids, owner, vectors, provenance.current_model_id(c)))
            c.executemany("INSERT INTO ops (op, label, ts) VALUES ('enroll', ?, ?)",
                          [(label, now) for label in labels])
        return Change(labels, cids, tids, owner, removed)

    def add(self, label: str, vecs: np.ndarray) -> Change:
        with self.transaction() as c:
            cid = self.class_id(label)
            if cid is None:
                raise UnknownLabelError(f"unknown label {label!r}")
            start = self._next_id(c, "templates")
            added = np.arange(start, start + len(vecs), dtype=np.int64)
            owner = np.full(len(vecs), cid, dtype=np.int64)
            c.executemany("INSERT INTO templates (id, class_id, vector, model) VALUES (?, ?, ?, ?)",
                          self._template_rows(added, owner, vecs, provenance.current_model_id(c)))
            now = utc_now()
            c.execute("UPDATE classes SET updated_at = ? WHERE id = ?", (now, cid))
            c.execute("INSERT INTO ops (op, label, ts) VALUES ('add', ?, ?)", (label, now))
        return Change([label], np.array([cid], dtype=np.int64), added, owner, _NO_IDS)

    def erase(self, label: str) -> Change:
        with self.transaction() as c:
            cid = self.class_id(label)
            if cid is None:
                raise UnknownLabelError(f"unknown label {label!r}")
            removed = self._template_ids(c, cid)
            c.execute("DELETE FROM templates WHERE class_id = ?", (cid,))
            c.execute("DELETE FROM classes WHERE id = ?", (cid,))
            # erase for good: the op log keeps that *something* was erased, not whom
            tag = self.erased_tag(label)
            c.execute("UPDATE ops SET label = ? WHERE label = ?", (tag, label))
            if c.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'audit'").fetchone():
                # the service's audit log (same database) names labels too: same rule, same commit
                c.execute("UPDATE audit SET labels = (SELECT json_group_array(CASE WHEN value = ?1 "
                          "THEN ?2 ELSE value END) FROM json_each(audit.labels)) "
                          "WHERE EXISTS (SELECT 1 FROM json_each(audit.labels) WHERE value = ?1)",
                          (label, tag))
            if c.execute("SELECT 1 FROM sqlite_master WHERE name = 'thumbnails'").fetchone():
                # images the service kept of this class (serve/thumbnails.py): gone in the same commit
                c.execute("DELETE FROM thumbnails WHERE class_id = ?", (cid,))
            c.execute("INSERT INTO ops (op, label, ts) VALUES ('erase', ?, ?)", (tag, utc_now()))
        return Change([label], np.array([cid], dtype=np.int64), _NO_IDS, _NO_IDS, removed, erased=True)

    def erased_tag(self, label: str) -> str:
        """What the op log keeps of an erased label: a salted hash, not the label."""
        return erased_tag(self.uuid, label)

    # ------------------------------------------------------------------ maintenance
    def compact(self) -> None:
        """Checkpoint the WAL, ``VACUUM`` and truncate the WAL: freed pages leave the files."""
        with self._checkpoints_held():
            vacuum(self._conn, self.path)

    def truncate_wal(self) -> None:
        """Checkpoint and truncate the WAL: older page images (erased rows) leave the disk."""
        with self._checkpoints_held():
            truncate_wal(self._conn, self.path)

    def _checkpoints_held(self) -> AbstractContextManager:
        """Keep the background checkpointer out: its PASSIVE checkpoint would make TRUNCATE give up."""
        return self._checkpointer.lock if self._checkpointer is not None else nullcontext()

    def integrity_problems(self) -> list[str]:
        """SQLite's own integrity check plus referential checks of the gallery tables."""
        c = self._conn
        problems = [r[0] for r in c.execute("PRAGMA integrity_check") if r[0] != "ok"]
        orphans = c.execute("SELECT COUNT(*) FROM templates WHERE class_id NOT IN "
                            "(SELECT id FROM classes)").fetchone()[0]
        if orphans:
            problems.append(f"{orphans} templates belong to no class")
        empty = c.execute("SELECT COUNT(*) FROM classes WHERE id NOT IN "
                          "(SELECT class_id FROM templates)").fetchone()[0]
        if empty:
            problems.append(f"{empty} classes have no template")
        return problems

    def settings(self) -> dict:
        """Non-reserved meta entries (thresholds, model fingerprint, ...)."""
        rows = self._conn.execute("SELECT key, value FROM meta").fetchall()
        return {k: json.loads(v) for k, v in rows if k not in RESERVED_KEYS}

    def class_records(self) -> list[tuple[int, str, dict]]:
        rows = self._conn.execute("SELECT id, label, meta FROM classes ORDER BY id").fetchall()
        return [(int(i), label, json.loads(m)) for i, label, m in rows]

    @staticmethod
    def _template_ids(c: sqlite3.Connection, cid: int) -> np.ndarray:
        rows = c.execute("SELECT id FROM templates WHERE class_id = ?", (cid,)).fetchall()
        return np.asarray([r[0] for r in rows], dtype=np.int64)


def erased_tag(gallery_uuid: str, label: str) -> str:
    """The salted hash that replaces an erased label in a gallery's logs (ops and audit)."""
    import hashlib

    return "erased:" + hashlib.sha256(f"{gallery_uuid}:{label}".encode()).hexdigest()[:16]


