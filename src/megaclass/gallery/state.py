"""The one owner of an open gallery's live state.

:class:`GalleryState` holds the store, the state derived from it (the
:class:`~megaclass.gallery.index.ClassIndex`, the label table, the model fingerprint),
which op of the store they reflect, which op the on-disk snapshot covers, and the two
locks that guard them. Every part of a gallery — the public
:class:`~megaclass.gallery.Gallery`, maintenance, upkeep, the recall monitor, re-embed —
is handed this object and goes through its methods; none keeps a copy of its state.
"""

from __future__ import annotations

import errno
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from ..errors import GalleryClosedError, MegaclassError, ReadOnlyGalleryError
from .change import Change
from .concurrency import IndexWhileCommitting, ReadWriteLock
from .faiss_api import remove_ids
from .index import ClassIndex
from .labels import LabelTable
from .provenance import MODEL_KEY
from .store import Store

INDEX_SETTING = "index"  # the requested index spec, kept in the gallery's meta

#: builds an index from a store: ``(store, requested spec, templates) -> ClassIndex``
Builder = Callable[[Store, str, int], ClassIndex]


class GalleryState:
    """An open gallery's store and derived state, with the locks that guard them.

    ``writer_lock`` (re-entrant) serialises writers and state reloads; ``search_lock``
    (:class:`ReadWriteLock`) is shared by searches and taken alone for every change of the
    index or the label table, so a search sees a write entirely or not at all.
    ``background`` says whether index rebuilds and recall passes run in threads.
    """

    def __init__(self, store: Store, *, read_only: bool = False, read_only_reason: str | None = None):
        self.path: Path = store.path.parent
        self.dim: int = store.dim
        self.read_only = read_only
        self.read_only_reason = read_only_reason
        self.writer_lock = threading.RLock()
        self.search_lock = ReadWriteLock()
        self.background = True
        self.maintenance_log: list[dict] = []  # what rebuilds and re-tunes did (or why they failed)
        self._store: Store | None = store
        self._index: ClassIndex | None = None
        self._labels = LabelTable()
        self._model: str | None = None
        self._seq = 0  # the last op seq the in-memory state reflects
        self._snapshot_seq: int | None = None  # the op seq index.faiss covers (None: stale)
        self._busy = False  # a write is in progress
        self._last_write = time.monotonic()
        self._build: Builder | None = None
        self._after_reload: Callable[[], None] = lambda: None

    def attach(self, build: Builder, after_reload: Callable[[], None]) -> None:
        """Give the state its index builder and what to run after it reloaded from the store
        (the upkeep's scheduler), then load it."""
        self._build, self._after_reload = build, after_reload
        self.load()

    # ------------------------------------------------------------------ views
    @property
    def index(self) -> ClassIndex:
        assert self._index is not None, "GalleryState.attach() loads the index"
        return self._index

    @property
    def labels(self) -> LabelTable:
        return self._labels

    @property
    def model(self) -> str | None:
        """Fingerprint of the model that made the templates, as of the last write or load."""
        return self._model

    @property
    def seq(self) -> int:
        """The op seq of the store the in-memory state reflects."""
        return self._seq

    @property
    def snapshot_seq(self) -> int | None:
        """The op seq the on-disk index snapshot covers (None: it is stale or missing)."""
        return self._snapshot_seq

    @property
    def closed(self) -> bool:
        return self._store is None

    @property
    def store(self) -> Store:
        """The store (GalleryClosedError once closed)."""
        if self._store is None:
            raise GalleryClosedError(f"gallery {self.path} is closed")
        return self._store

    def idle_seconds(self) -> float:
        """Seconds since the last write ended (0 while one is in progress)."""
        return 0.0 if self._busy else time.monotonic() - self._last_write

    # ------------------------------------------------------------------ sessions
    @contextmanager
    def session(self) -> Iterator[Store]:
        """Hold the writer lock; fail if closed; catch up if another process wrote since."""
        with self.writer_lock:
            store = self.store
            if store.last_seq() != self._seq:
                self.load()
                self._after_reload()
            yield store

    @contextmanager
    def writing(self) -> Iterator[Store]:
        """:meth:`session` for a write: a due rebuild waits while writes keep coming."""
        with self.session() as store:
            self._busy = True
            try:
                yield store
            finally:
                self._busy = False
                self._last_write = time.monotonic()

    def check_writable(self) -> None:
        if self.read_only:
            raise ReadOnlyGalleryError(f"gallery {self.path} is read-only "
                                       f"({self.read_only_reason or 'opened with read_only=True'}): "
                                       "writes are refused")

    # ------------------------------------------------------------------ loading
    def load(self) -> None:
        """(Re)build the label table and the index from the store (see :meth:`load_locked`)."""
        with self.search_lock.write():
            self.load_locked()

    def load_locked(self) -> None:
        """:meth:`load` with ``search_lock`` held: the snapshot brought up to date by
        replaying its difference with the store, else a rebuild from the store."""
        store = self.store
        assert self._build is not None, "GalleryState.attach() gives the builder"
        requested = store.get_meta(INDEX_SETTING) or "auto"
        with store.reading(), ThreadPoolExecutor(1) as pool:  # one consistent view of the store
            # a re-embed's switch may have changed the model and the dim (see reembed.py)
            self.dim = store.dim = int(store.get_meta("dim"))
            model = store.get_meta(MODEL_KEY)
            # the snapshot is hashed and parsed (C code, GIL released) while SQLite is read
            loading = pool.submit(ClassIndex.load, self.path, gallery_uuid=store.uuid, dim=self.dim,
                                  requested=requested, cipher=store.cipher)
            tids, cids = store.template_classes()
            seq = store.last_seq()
            labels = LabelTable.from_chunks(store.class_rows())
            index = loading.result()
            self._snapshot_seq = None
            if index is not None:
                snap = index.template_ids()
                added = np.setdiff1d(tids, snap, assume_unique=True)
                gone = np.setdiff1d(snap, tids, assume_unique=True)
                if not len(added) and not len(gone):
                    self._snapshot_seq = seq
                if len(added):
                    index.index.add_with_ids(store.templates_by_ids(added), added)
                if len(gone) and index.exact:
                    remove_ids(index.index, gone)
            else:
                index = self._build(store, requested, len(tids))
        self._seq = seq
        index.set_map(tids, cids)
        self._index = index
        self._labels = labels
        self._model = model

    def reload(self) -> None:
        """Reload from the store now (after a change made behind the state, e.g. a
        re-embed's switch), then let the upkeep look at the new index."""
        with self.writer_lock:
            self.load()
            self._after_reload()

    # ------------------------------------------------------------------ changes
    def apply(self, change: Change, vectors: np.ndarray, early: IndexWhileCommitting | None = None) -> None:
        """Mirror a committed store write into the index and label table (atomically for
        searches). ``early``: the templates were added (hidden) while the store committed."""
        indexed = early.done() if early is not None else None
        with self.search_lock.write():
            self._apply_locked(change, vectors, indexed)

    def _apply_locked(self, change: Change, vectors: np.ndarray, indexed: bool | None) -> None:
        store, index = self.store, self.index
        if store.seq_before != self._seq or indexed is False:
            self.load_locked()  # another process wrote meanwhile, or the early add failed
            return
        try:
            index.remove(change.removed)
            if indexed:
                index.publish(change.added, change.added_class)
            else:
                index.add(change.added, change.added_class, vectors)
            if change.erased:
                self._labels.remove(change.class_ids.tolist())
            else:
                self._labels.update(change.class_ids.tolist(), change.labels)
            self._seq = store.seq_after
            self._model = store.get_meta(MODEL_KEY)
        except BaseException:
            self.load_locked()  # the store committed: rebuild the derived state from it
            raise

    def swap_index(self, new: ClassIndex, live: np.ndarray) -> None:
        """Replace the index with ``new``, which holds the templates ``live`` (mapped to
        their current classes); the snapshot is stale from here on."""
        with self.search_lock.write():
            new.set_map(live, self.index.class_map.lookup(live))
            self._index = new
            self._snapshot_seq = None

    def snapshot_stale(self) -> None:
        """The on-disk snapshot no longer matches (knobs re-fitted, index purged, ...)."""
        self._snapshot_seq = None

    def save(self) -> None:
        """Write the index snapshot atomically (caller holds :meth:`session`)."""
        store = self.store
        try:
            self.index.save(self.path, gallery_uuid=store.uuid, seq=self._seq, cipher=store.cipher)
        except OSError as exc:
            for tmp in self.path.glob("index*.tmp"):
                tmp.unlink(missing_ok=True)
            kind = (ReadOnlyGalleryError if exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM)
                    else MegaclassError)
            raise kind(f"cannot write the index snapshot of {self.path}: "
                       f"{exc.strerror or exc}") from None
        self._snapshot_seq = self._seq

    def snapshot_current(self) -> bool:
        """Whether the on-disk snapshot covers the store's last op."""
        return self._snapshot_seq == self.store.last_seq()

    def close(self) -> None:
        """Close the store (idempotent); later calls raise GalleryClosedError."""
        with self.writer_lock:
            if self._store is not None:
                self._store.close()
                self._store = None
