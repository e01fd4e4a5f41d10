"""How one gallery is shared: searches in parallel, one writer, index adds beside commits.

- :class:`ReadWriteLock`: searches hold it shared; every change of the index or the
  label maps holds it alone, so a search sees a write entirely or not at all.
- :class:`IndexWhileCommitting`: a large write's templates go into the index (hidden
  from search) on a second thread while SQLite writes and commits them.
- :class:`threads_for`: one OpenMP thread for FAISS calls on a few rows.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

import faiss
import numpy as np

if TYPE_CHECKING:
    from .state import GalleryState


SMALL_BATCH = 16  # adds/searches of this many rows or fewer run on one OpenMP thread


class threads_for:
    """One OpenMP thread for tiny calls: waking a thread team costs more than the work
    (measured: a 1-vector IVF add took 7 ms with 2 threads on a busy box, 0.07 ms with 1).
    ``omp_set_num_threads`` only affects the calling thread, so concurrent callers are safe.
    A plain class, not a generator context manager: it sits on the per-query path."""

    __slots__ = ("previous",)

    def __init__(self, rows: int):
        self.previous = faiss.omp_get_max_threads() if rows <= SMALL_BATCH else None

    def __enter__(self) -> None:
        if self.previous is not None:
            faiss.omp_set_num_threads(1)

    def __exit__(self, *exc) -> None:
        if self.previous is not None:
            faiss.omp_set_num_threads(self.previous)


class ReadWriteLock:
    """Many readers or one writer; a waiting writer blocks new readers (no starvation)."""

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._readers = 0
        self._writer = False
        self._waiting = 0

    @contextmanager
    def read(self) -> Iterator[None]:
        with self._cond:
            while self._writer or self._waiting:
                self._cond.wait()
            self._readers += 1
        try:
            yield
        finally:
            with self._cond:
                self._readers -= 1
                if not self._readers:
                    self._cond.notify_all()

    @contextmanager
    def write(self) -> Iterator[None]:
        with self._cond:
            self._waiting += 1
            while self._writer or self._readers:
                self._cond.wait()
            self._waiting -= 1
            self._writer = True
        try:
            yield
        finally:
            with self._cond:
                self._writer = False
                self._cond.notify_all()


class IndexWhileCommitting:
    """Adds a write's templates to the index in a thread while the store writes and
    commits them (FAISS and SQLite both release the GIL, so the two overlap on two
    cores). The templates stay hidden from search (mapped to no class) until the commit
    succeeded and the gallery publishes them; if it failed, they are discarded."""

    def __init__(self, state: GalleryState, vectors: np.ndarray):
        self._state, self._vectors = state, vectors
        self.tids: np.ndarray = np.empty(0, dtype=np.int64)  # set by start()
        self.error: BaseException | None = None
        self._thread: threading.Thread | None = None

    def start(self, tids: np.ndarray) -> None:
        """Called by the store inside the transaction, once the template ids are known."""
        self.tids = tids
        self._thread = threading.Thread(target=self._add, name="megaclass-index-add", daemon=True)
        self._thread.start()

    def _add(self) -> None:
        st = self._state
        try:
            with st.search_lock.write():  # the gallery's writer lock is held by the enrolling thread
                st.index.add_hidden(self.tids, self._vectors)
        except BaseException as exc:  # noqa: BLE001 - reported to the enrolling thread
            self.error = exc

    def done(self) -> bool | None:
        """Wait for the add: True if the templates are in the index (hidden), False if the
        add failed (the index state is unknown), None if it never started."""
        if self._thread is None:
            return None
        self._thread.join()
        return self.error is None

    def undo(self) -> bool:
        """After a failed commit, take the hidden templates out of the index again; False
        if the index must be reloaded instead (the add failed part-way, or its type cannot
        remove vectors)."""
        added = self.done()
        if not added:
            return added is None
        with self._state.search_lock.write():
            return self._state.index.discard(self.tids)

