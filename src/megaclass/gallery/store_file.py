"""``gallery.db`` as a file: its schema, creating it, opening and checking it.

:class:`~megaclass.gallery.store.Store` is the open database; this module is what comes
before it (the tables, the page size, the pragmas an open sets, the key check) and the
translation of SQLite's errors on a gallery file into typed ones.
"""

from __future__ import annotations

import json
import os
import sqlite3
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ..errors import (
    EncryptionKeyError,
    MegaclassError,
    NotAGalleryError,
    ReadOnlyGalleryError,
    StoreBusyError,
)
from . import provenance
from .crypto import ALGORITHM, KEY_ENV, TemplateCipher

FORMAT_VERSION = 1
DB_NAME = "gallery.db"
#: page size of new galleries: a 256-d template is a 1 KiB row, and bulk enrolls write far
#: fewer pages at 32 KiB than at SQLite's 4 KiB default (measured, raw SQLite, 2M templates
#: x 256 in 20k-row transactions: 47.8k rows/s at 4 KiB, 60.6k at 16 KiB, 65.3k at 32 KiB)
PAGE_SIZE = 32768

SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE classes (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    label TEXT NOT NULL UNIQUE,
    meta TEXT NOT NULL DEFAULT '{}',
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL
);
CREATE TABLE templates (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    class_id INTEGER NOT NULL REFERENCES classes(id) ON DELETE CASCADE,
    vector BLOB NOT NULL
);
CREATE INDEX templates_class ON templates(class_id);
CREATE TABLE ops (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    op TEXT NOT NULL CHECK (op IN ('enroll', 'add', 'erase')),
    label TEXT NOT NULL,
    ts TEXT NOT NULL
);
"""
# an erase rewrites the erased label's op rows: without this index that is a scan of the
# whole log (measured at 2M ops: 166 ms per erase; with it 1.6 ms, for 1.4 us per enroll)
OPS_LABEL_INDEX = "CREATE INDEX IF NOT EXISTS ops_label ON ops(label)"
SCHEMA += OPS_LABEL_INDEX + ";\n"
TABLES = {"meta", "classes", "templates", "ops"}


def utc_now() -> str:
    """The timestamps the gallery tables record (UTC, ISO 8601, microseconds)."""
    return datetime.now(UTC).isoformat(timespec="microseconds")


def create_db(directory: Path, dim: int, key: bytes | None = None) -> Path:
    """Create ``directory/gallery.db`` atomically (built under a tmp name, then renamed);
    returns its path. With ``key``, templates are encrypted (AES-256-GCM) from the first write on.
    """
    final = directory / DB_NAME
    tmp = directory / (DB_NAME + ".tmp")
    tmp.unlink(missing_ok=True)
    conn = sqlite3.connect(tmp, isolation_level=None)
    try:
        conn.execute(f"PRAGMA page_size={PAGE_SIZE}")  # before the first table exists
        conn.executescript("BEGIN;" + SCHEMA)
        now = utc_now()
        rows: dict[str, Any] = {"format_version": FORMAT_VERSION, "dim": int(dim),
                                "uuid": uuid.uuid4().hex, "created_at": now}
        if key is not None:
            rows["encryption"] = {"algorithm": ALGORITHM,
                                  "key_check": TemplateCipher(key).key_check(rows["uuid"])}
        conn.executemany("INSERT INTO meta VALUES (?, ?)",
                         [(k, json.dumps(v)) for k, v in rows.items()])
        conn.execute("COMMIT")
    finally:
        conn.close()
    tmp.replace(final)
    return final


def open_db(db_path: Path, key: bytes | None = None, *,
            read_only: bool = False) -> tuple[sqlite3.Connection, TemplateCipher | None, bool]:
    """Open an existing ``gallery.db`` and check it: ``(connection, cipher, immutable)``.

    NotAGalleryError if it is not a gallery; EncryptionKeyError if the gallery is
    encrypted and ``key`` is missing or wrong, or if a key is given for a gallery that
    stores templates in clear. ``immutable``: opened with SQLite's ``immutable=1`` (see
    :attr:`Store.immutable <megaclass.gallery.store.Store.immutable>`).
    """
    conn = None
    try:
        conn = connect(db_path, "ro" if read_only else "rw")
        names = table_names(conn, db_path, read_only)
    except sqlite3.Error as exc:
        if conn is not None:
            conn.close()
        raise NotAGalleryError(f"{db_path}: cannot open as SQLite ({exc})") from exc
    immutable = names is None
    if names is None:  # a WAL database in a directory this process cannot write
        conn.close()
        try:
            conn = connect(db_path, "ro", immutable=True)
            names = {r[0] for r in conn.execute("SELECT name FROM sqlite_master")}
        except sqlite3.Error as exc:
            raise NotAGalleryError(f"{db_path}: cannot open as SQLite ({exc})") from exc
    with closing_on_error(conn, db_path):
        missing = TABLES - names
        if missing:
            raise NotAGalleryError(
                f"{db_path}: not a megaclass gallery (missing tables {sorted(missing)})")
        meta = {k: json.loads(v) for k, v in conn.execute("SELECT key, value FROM meta")}
        if not {"format_version", "dim", "uuid"} <= meta.keys():
            raise NotAGalleryError(f"{db_path}: not a megaclass gallery (incomplete meta)")
        if meta["format_version"] != FORMAT_VERSION:
            raise NotAGalleryError(
                f"{db_path}: unsupported gallery format version {meta['format_version']!r}")
        dim = meta["dim"]
        if type(dim) is not int or dim < 1:
            raise NotAGalleryError(f"{db_path}: damaged gallery meta (dim={dim!r})")
        cipher = cipher_for(meta, key, db_path)
        if not read_only:
            conn.execute(OPS_LABEL_INDEX)  # galleries made before it get it once
            provenance.migrate(conn)  # per-template model, re-embed and sample tables
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA wal_autocheckpoint=0")  # checkpoints run in a thread
            conn.execute("PRAGMA cache_size=-65536")  # 64 MiB: bulk inserts touch many pages
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("PRAGMA foreign_keys=ON")
        conn.execute("PRAGMA secure_delete=ON")  # deleted rows are zeroed, not left behind
    return conn, cipher, immutable


@contextmanager
def closing_on_error(conn: sqlite3.Connection, db_path: Path) -> Iterator[None]:
    """Close ``conn`` on any error; SQLite and decoding errors become NotAGalleryError."""
    try:
        yield
    except MegaclassError:
        conn.close()
        raise
    except (sqlite3.DatabaseError, ValueError, TypeError) as exc:
        conn.close()
        raise NotAGalleryError(f"{db_path}: not a megaclass gallery ({exc})") from exc
    except BaseException:
        conn.close()
        raise


def connect(db_path: Path, mode: str, *, immutable: bool = False) -> sqlite3.Connection:
    uri = f"{db_path.resolve().as_uri()}?mode={mode}" + ("&immutable=1" if immutable else "")
    return sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False)


def table_names(conn: sqlite3.Connection, db_path: Path, read_only: bool) -> set[str] | None:
    """The database's table names; None when a read-only open cannot read a WAL database
    because its ``-shm`` file cannot be created (a directory this process cannot write)."""
    try:
        return {r[0] for r in conn.execute("SELECT name FROM sqlite_master")}
    except sqlite3.OperationalError:
        if read_only and not os.access(db_path.parent, os.W_OK):
            return None
        raise


def write_error(exc: sqlite3.OperationalError, db_path: Path) -> Exception:
    """A write that SQLite refused for lack of write access, or because another process
    held the write lock too long, as a typed one-line error (else ``exc`` itself)."""
    text = str(exc).lower()
    if "readonly" in text or "read-only" in text or "unable to open" in text:
        return ReadOnlyGalleryError(f"gallery {db_path.parent} is read-only ({exc}): "
                                    "writes are refused")
    if "locked" in text or "busy" in text:
        return StoreBusyError(f"gallery {db_path.parent} is busy: another process holds its "
                              f"write lock ({exc}); retry")
    return exc


def cipher_for(meta: dict, key: bytes | None, db_path: Path) -> TemplateCipher | None:
    """The cipher an open needs, after checking the key against the gallery's key check."""
    enc = meta.get("encryption")
    if enc is None:
        if key is not None:
            raise EncryptionKeyError(
                f"{db_path}: this gallery stores templates in clear, but a key was given "
                f"(unset ${KEY_ENV}, or export it and import into a new encrypted gallery)")
        return None
    if key is None:
        raise EncryptionKeyError(
            f"{db_path}: the gallery is encrypted; configure its key (key file, or ${KEY_ENV})")
    cipher = TemplateCipher(key)
    cipher.verify_key_check(enc.get("key_check", ""), str(meta["uuid"]), str(db_path))
    return cipher
