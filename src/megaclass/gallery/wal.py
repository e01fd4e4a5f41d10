"""Background WAL checkpoints for a gallery's SQLite store.

In WAL mode a commit appends pages to ``gallery.db-wal`` and fsyncs it: that is what
makes an acknowledged enroll durable. Copying those pages back into ``gallery.db`` (a
*checkpoint*) is housekeeping, but SQLite's automatic checkpoint runs it inside the
committing call, so a bulk enroll pays for writing every page twice. The
:class:`WalCheckpointer` turns the automatic checkpoint off for the writer connection and
runs ``PRAGMA wal_checkpoint(PASSIVE)`` from its own connection in a thread after each
commit, on the other core. Durability is unchanged (it never touches uncommitted
frames); a crash leaves a longer WAL, which SQLite replays on the next open.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path

from ..errors import MegaclassError


class WalCheckpointer:
    """A daemon thread checkpointing ``db_path``'s WAL each time :meth:`poke` is called."""

    def __init__(self, db_path: Path):
        self._path = db_path
        self._wake = threading.Event()
        self._stopping = False
        self.lock = threading.Lock()  # held while checkpointing; hold it to keep the thread out
        self._thread = threading.Thread(target=self._run, name=f"megaclass-wal-{db_path.parent.name}",
                                        daemon=True)
        self._thread.start()

    def poke(self) -> None:
        """A commit happened: checkpoint soon (several pokes while busy make one checkpoint)."""
        self._wake.set()

    def _run(self) -> None:
        conn = sqlite3.connect(self._path, isolation_level=None, check_same_thread=False)
        try:
            conn.execute("PRAGMA synchronous=FULL")
            while True:
                self._wake.wait()
                self._wake.clear()
                if self._stopping:
                    return
                with self.lock:
                    try:
                        conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
                    except sqlite3.Error:  # busy or closing: the next commit pokes again
                        pass
        finally:
            conn.close()

    def close(self) -> None:
        """Stop the thread (the store's own close then checkpoints what is left)."""
        self._stopping = True
        self._wake.set()
        self._thread.join()


def truncate_wal(conn: sqlite3.Connection, db_path: Path, attempts: int = 20) -> None:
    """Checkpoint and truncate the WAL of ``conn``'s database (``db_path``, for the error);
    MegaclassError if a reader in another process keeps it from finishing."""
    for _ in range(attempts):
        busy, _, _ = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        if not busy:
            return
        time.sleep(0.05)
    if busy:  # a reader (another process) holds an old snapshot: the WAL keeps old pages
        raise MegaclassError(f"{db_path}: cannot truncate the WAL while another process "
                             "reads the gallery; retry compact when it is idle")


def vacuum(conn: sqlite3.Connection, db_path: Path) -> None:
    """Truncate the WAL, ``VACUUM`` and truncate again: freed pages leave both files."""
    truncate_wal(conn, db_path)
    conn.execute("VACUUM")
    truncate_wal(conn, db_path)
