"""The service's own SQLite connection to ``<gallery>/gallery.db``.

The service keeps its tables (``api_keys``, ``audit``) in the gallery's database so that
one directory holds everything, but never touches the gallery's own tables: it opens a
separate connection and creates its tables with ``IF NOT EXISTS`` (the gallery ignores
extra tables). One lock serialises this connection among the server's threads.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

from ..errors import NotAGalleryError, ReadOnlyGalleryError

DB_NAME = "gallery.db"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS api_keys (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    role TEXT NOT NULL CHECK (role IN ('reader', 'enroller', 'admin')),
    secret_sha256 TEXT NOT NULL,
    created_at TEXT NOT NULL,
    revoked_at TEXT
);
CREATE TABLE IF NOT EXISTS audit (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    ts TEXT NOT NULL,
    key_id TEXT,
    operation TEXT NOT NULL,
    labels TEXT NOT NULL DEFAULT '[]',
    decision TEXT NOT NULL,
    status INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS audit_ts ON audit(ts);
"""


def now() -> str:
    """UTC time as ISO 8601 with microseconds."""
    return datetime.now(UTC).isoformat(timespec="microseconds")


class ServiceDB:
    """A locked sqlite3 connection to a gallery's database, with the service tables.

    Raises NotAGalleryError when ``gallery`` holds no ``gallery.db`` (create the gallery
    first: ``megaclass serve`` or ``megaclass enroll`` do).

    Example
    -------
    >>> with ServiceDB("gallery/") as db:                  # doctest: +SKIP
    ...     db.execute("SELECT count(*) FROM audit").fetchone()
    """

    def __init__(self, gallery: str | Path):
        path = Path(gallery) / DB_NAME
        if not path.is_file():
            raise NotAGalleryError(f"{Path(gallery)}: no gallery here (no {DB_NAME}); "
                                   "create it first, e.g. with `megaclass serve` or `megaclass enroll`")
        if not (os.access(path, os.W_OK) and os.access(path.parent, os.W_OK)):
            raise ReadOnlyGalleryError(
                f"{Path(gallery)} is read-only: the service records its audit log and API keys "
                "in gallery.db, so it needs a writable gallery (search a read-only copy from "
                "Python with Gallery.open(path, read_only=True))")
        self.path = path
        self._lock = threading.Lock()
        self._conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=rw", uri=True, timeout=30,
                                     isolation_level=None, check_same_thread=False)
        self._conn.execute("PRAGMA busy_timeout=30000")
        self._conn.execute("PRAGMA synchronous=NORMAL")  # WAL: durable across app crashes
        self._conn.executescript(_SCHEMA)  # IF NOT EXISTS: idempotent

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """Hold the lock and run one ``BEGIN IMMEDIATE`` ... ``COMMIT`` (rollback on error)."""
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")

    def query(self, sql: str, params: tuple = ()) -> list[tuple]:
        """Run a read-only statement and return all rows."""
        with self._lock:
            return self._conn.execute(sql, params).fetchall()

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def __enter__(self) -> ServiceDB:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
