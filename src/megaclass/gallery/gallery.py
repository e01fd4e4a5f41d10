"""The public :class:`Gallery`: enroll classes, search the best k classes for queries.

Works without torch: numpy, faiss, sqlite3 and the standard library only.
"""

from __future__ import annotations

import errno
import json
import os
import sqlite3
import threading
import time
import unicodedata
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import (
    ConfigError,
    DimensionMismatchError,
    DuplicateLabelError,
    GalleryClosedError,
    InvalidInputError,
    MegaclassError,
    ModelMismatchError,
    NotAGalleryError,
    ReadOnlyGalleryError,
)
from .concurrency import IndexWhileCommitting, ReadWriteLock
from .crypto import resolve_key
from .index import ClassIndex, resolve_spec
from .labels import LabelTable
from .provenance import MODEL_KEY
from .recall import RecallWatch
from .store import DB_NAME, RESERVED_KEYS, Change, Store
from .upkeep import IndexUpkeep
from .vectors import as_rows, as_unit_vectors, unit_rows_of_items

INDEX_SETTING = "index"  # the requested index spec, kept in the gallery's meta
EARLY_INDEX_MIN = 2048  # writes of this many templates are indexed while SQLite commits them


@dataclass(frozen=True)
class Match:
    """One search result: a class and the cosine similarity of its best template."""

    label: str
    score: float


def _check_label(label, what: str = "label") -> str:
    if not isinstance(label, str) or not label:
        raise InvalidInputError(f"{what} must be a non-empty string, got {label!r}")
    return label


def _check_new_label(label) -> str:
    """A label to enroll: non-empty, and free of control characters (Unicode category Cc:
    newlines, tabs, NUL, DEL, C1 controls), which no URL path, form field, terminal table
    or log line carries faithfully. Lookups stay lenient so older labels can be erased."""
    label = _check_label(label)
    bad = sorted({ch for ch in label if unicodedata.category(ch) == "Cc"})
    if bad:
        codes = ", ".join(f"U+{ord(ch):04X}" for ch in bad)
        raise InvalidInputError(f"label {label!r} contains control characters ({codes}); "
                                "use printable characters only")
    return label


def _check_meta(meta) -> dict:
    if meta is None:
        return {}
    if not isinstance(meta, dict):
        raise InvalidInputError(f"class meta must be a dict, got {type(meta).__name__}")
    try:
        return json.loads(json.dumps(meta, allow_nan=False))
    except (TypeError, ValueError) as exc:
        raise InvalidInputError(f"class meta is not JSON-serialisable: {exc}") from exc


class Gallery(IndexUpkeep):
    """A directory of enrolled classes (labels with embedding templates), searchable by class.

    ``gallery.db`` (SQLite) is the source of truth; the FAISS index is derived from it and
    snapshotted to ``index.faiss`` on :meth:`save` / :meth:`close`. Each enroll / add /
    erase is one all-or-nothing transaction. One object may be shared among threads.

    Examples
    --------
    >>> import numpy as np
    >>> with Gallery.open(tmp_path / "g", dim=4) as g:          # doctest: +SKIP
    ...     g.enroll("cat", np.eye(4)[:2])
    ...     g.enroll("dog", [0, 0, 1.0, 0])
    ...     g.search(np.array([1.0, 0.1, 0, 0]), k=1)
    2
    1
    [[Match(label='cat', score=0.995...)]]
    """

    path: Path
    dim: int
    read_only: bool = False

    def __init__(self, store: Store, *, read_only: bool = False):
        """Use :meth:`Gallery.open`."""
        self.read_only = read_only
        self._store: Store | None = store
        self._erasures = 0
        self.path = store.path.parent
        self.dim = store.dim
        self._lock = threading.RLock()  # serialises writers (and state reloads)
        self._rw = ReadWriteLock()  # searches share it; index/map mutations take it alone
        self._worker: threading.Thread | None = None  # background index rebuild
        self._cancel = threading.Event()
        self.maintenance_log: list[dict] = []  # what background rebuilds did (or why they failed)
        self._last_write = time.monotonic()
        self._busy = False  # a write is in progress (a due rebuild waits for quiet)
        self._recall = RecallWatch(self)  # live recall monitor, query reservoir, tuning probes
        try:
            self._recall.configure(store)
            self._load_state()
        except BaseException:
            store.close()
            raise
        with self._lock:
            self._schedule_maintenance()

    # ------------------------------------------------------------------ open / close
    @classmethod
    def open(cls, path, *, dim: int | None = None, create: bool = True, key=None,
             index: str | None = None, read_only: bool = False) -> Gallery:
        """Open the gallery at ``path``, creating it (``dim`` required) if missing or empty.

        ``key`` (32 bytes or a key-file path; default: ``$MEGACLASS_GALLERY_KEY`` or
        ``$MEGACLASS_GALLERY_KEY_FILE``) encrypts templates and the index snapshot with
        AES-256-GCM. Without a key, templates are stored in clear. An encrypted gallery
        opened without its key, or with a wrong one, raises EncryptionKeyError.

        ``index`` is a FAISS factory string (``"Flat"``, ``"IVF4096,Flat"``,
        ``"IVF4096,SQ8"``, ``"HNSW32"``, ...) or ``"auto"`` (the default for new
        galleries: exact search while small, a tuned IVF index as it grows; see
        :mod:`megaclass.gallery.index`). It is stored with the gallery; passing a
        different one rebuilds the index.

        ``read_only=True`` opens an existing gallery for searching only (several
        processes may do so while one writer enrolls; each catches up with the writer's
        commits on its next call). Writes then raise ConfigError.

        Raises ConfigError (new gallery without ``dim``, or ``create=False``),
        DimensionMismatchError (``dim`` differs from an existing gallery's), and
        NotAGalleryError (a non-empty directory that is not a gallery, or a damaged db).

        Examples
        --------
        >>> g = Gallery.open("faces", dim=512)        # doctest: +SKIP
        >>> g = Gallery.open("faces", create=False)   # doctest: +SKIP
        """
        path = Path(os.fspath(path))
        key = resolve_key(key)
        if index is not None:
            resolve_spec(index, 0)  # validate the grammar before touching anything
        if dim is not None and (type(dim) is not int or dim < 1):
            raise ConfigError(f"dim must be a positive int, got {dim!r}")
        if path.exists() and not path.is_dir():
            raise NotAGalleryError(f"{path}: not a megaclass gallery (not a directory)")
        db = path / DB_NAME
        if db.exists():
            if not read_only and not (os.access(path, os.W_OK) and os.access(db, os.W_OK)):
                read_only = True  # a read-only mount or directory: serve reads, refuse writes
                why = "its directory or database is not writable by this process"
            else:
                why = "opened with read_only=True"
            store = Store.open(db, key, read_only=read_only)
            if dim is not None and dim != store.dim:
                store.close()
                raise DimensionMismatchError(
                    f"{path}: gallery has dim {store.dim}, got dim={dim}")
            if index is not None and store.get_meta(INDEX_SETTING) != index and not read_only:
                store.set_meta(INDEX_SETTING, index)
            gallery = cls(store, read_only=read_only)
            gallery.read_only_reason = why if read_only else None
            return gallery
        if path.is_dir() and {p.name for p in path.iterdir()} - {DB_NAME + ".tmp"}:
            raise NotAGalleryError(
                f"{path}: not a megaclass gallery (non-empty directory without {DB_NAME})")
        if not create or read_only:
            raise ConfigError(f"no gallery at {path} to open (create=False or read_only=True)")
        if dim is None:
            raise ConfigError(f"creating a new gallery at {path} needs dim")
        try:
            path.mkdir(parents=True, exist_ok=True)
            store = Store.create(path, dim, key)
        except (OSError, sqlite3.OperationalError) as exc:
            raise ReadOnlyGalleryError(f"cannot create a gallery at {path}: "
                                       f"{getattr(exc, 'strerror', None) or exc}") from None
        if index is not None:
            store.set_meta(INDEX_SETTING, index)
        return cls(store)

    def _load_state(self) -> None:
        with self._rw.write():
            self._load_state_locked()

    def _load_state_locked(self) -> None:
        """(Re)build the in-memory maps and the index: the snapshot brought up to date by
        replaying its difference with the store, else a rebuild from the store."""
        store = self._store
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
                    index.index.remove_ids(gone)
            else:
                index = self._rebuild(store, requested, len(tids))
        self._seq = seq  # the last op seq the in-memory state reflects
        index.set_map(tids, cids)
        self._index = index
        self._labels = labels
        self._model = model


    @contextmanager
    def _open(self) -> Iterator[Store]:
        """Hold the lock; fail if closed; catch up if another process wrote since."""
        with self._lock:
            if self._store is None:
                raise GalleryClosedError(f"gallery {self.path} is closed")
            if self._store.last_seq() != self._seq:
                self._load_state()
                self._schedule_maintenance()
            yield self._store

    @contextmanager
    def _writing(self) -> Iterator[Store]:
        """:meth:`_open` for a write: a due rebuild waits while writes keep coming."""
        with self._open() as store:
            self._busy = True
            try:
                yield store
            finally:
                self._busy = False
                self._last_write = time.monotonic()

    #: why :attr:`read_only` is set (None when it is not)
    read_only_reason: str | None = None

    def _check_writable(self) -> None:
        if self.read_only:
            raise ReadOnlyGalleryError(f"gallery {self.path} is read-only "
                                       f"({self.read_only_reason or 'opened with read_only=True'}): "
                                       "writes are refused")

    def save(self) -> None:
        """Write the index snapshot (``index.faiss`` + ``index.json``) atomically."""
        self._check_writable()
        with self._open() as store:
            try:
                self._index.save(self.path, gallery_uuid=store.uuid, seq=self._seq,
                                 cipher=store.cipher)
            except OSError as exc:
                for tmp in self.path.glob("index*.tmp"):
                    tmp.unlink(missing_ok=True)
                kind = (ReadOnlyGalleryError if exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM)
                        else MegaclassError)
                raise kind(f"cannot write the index snapshot of {self.path}: "
                           f"{exc.strerror or exc}") from None
            self._snapshot_seq = self._seq
            self._recall.save()

    def close(self) -> None:
        """Save the snapshot if it is out of date and close the database. Idempotent."""
        self._cancel.set()  # an unfinished background rebuild is dropped (redone on next open)
        self.wait_for_index()
        self._recall.stop()
        with self._lock:
            if self._store is None:
                return
            try:
                if self._snapshot_seq != self._store.last_seq() and not self.read_only:
                    self.save()
                elif not self.read_only:
                    self._recall.save()
            finally:
                self._store.close()
                self._store = None

    def __enter__(self) -> Gallery:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------------ writes
    def _apply(self, change: Change, vectors: np.ndarray,
               early: IndexWhileCommitting | None = None) -> None:
        """Mirror a committed store write into the index and label maps (atomically for
        searches: they see all of it or none of it). ``early``: the templates were added
        to the index (hidden) while the store committed them."""
        indexed = early.done() if early is not None else None
        with self._rw.write():
            self._apply_locked(change, vectors, indexed)
        self._schedule_maintenance()

    def _apply_locked(self, change: Change, vectors: np.ndarray, indexed: bool | None = None) -> None:
        store = self._store
        if store.seq_before != self._seq or indexed is False:
            self._load_state_locked()  # another process wrote meanwhile, or the early add failed
            return
        try:
            self._index.remove(change.removed)
            if indexed:
                self._index.publish(change.added, change.added_class)
            else:
                self._index.add(change.added, change.added_class, vectors)
            if change.erased:
                self._labels.remove(change.class_ids.tolist())
            else:
                self._labels.update(change.class_ids.tolist(), change.labels)
            self._seq = store.seq_after
            self._model = store.get_meta(MODEL_KEY)
        except BaseException:
            self._load_state_locked()  # the store committed: rebuild the derived state from it
            raise

    def enroll(self, label: str, vectors, meta: dict | None = None, *,
               replace: bool = False) -> int:
        """Enroll a class with one or more templates; return the number stored.

        Raises DuplicateLabelError if ``label`` exists and ``replace`` is false;
        ``replace=True`` swaps the class's templates and meta in one transaction.

        Examples
        --------
        >>> g.enroll("alice", np.random.randn(3, g.dim), {"team": "red"})  # doctest: +SKIP
        3
        """
        return self.enroll_many([(label, vectors, meta)], replace=replace)

    def enroll_many(self, items: Iterable[tuple], *, replace: bool = False) -> int:
        """Enroll ``(label, vectors[, meta])`` items in ONE transaction; return templates stored.

        Everything is validated first; any bad item or existing label leaves the gallery
        unchanged.

        Examples
        --------
        >>> g.enroll_many([("a", va), ("b", vb, {"src": "x"})])  # doctest: +SKIP
        """
        self._check_writable()
        labels: list[str] = []
        rows: list[np.ndarray] = []
        metas: list[dict] = []
        seen: set[str] = set()
        for i, item in enumerate(items):
            if not isinstance(item, tuple | list) or len(item) not in (2, 3):
                raise InvalidInputError(f"item {i}: expected (label, vectors[, meta])")
            label = _check_new_label(item[0])
            if label in seen:
                raise DuplicateLabelError(f"item {i}: label {label!r} appears twice in batch")
            try:
                rows.append(as_rows(item[1], self.dim))
                metas.append(_check_meta(item[2] if len(item) == 3 else None))
            except InvalidInputError as exc:
                raise type(exc)(f"item {i} ({label!r}): {exc}") from exc
            labels.append(label)
            seen.add(label)
        vectors = unit_rows_of_items(labels, rows)
        counts = np.fromiter((len(r) for r in rows), dtype=np.int64, count=len(rows))
        with self._writing() as store:
            if not labels:
                return 0
            early = IndexWhileCommitting(self, vectors) if len(vectors) >= EARLY_INDEX_MIN else None
            try:
                change = store.enroll(labels, counts, vectors, metas, replace,
                                      on_ids=early.start if early is not None else None)
            except BaseException:
                if early is not None and not early.undo():
                    self._load_state()
                raise
            self._apply(change, vectors, early)
            return len(vectors)

    def add_templates(self, label: str, vectors) -> int:
        """Add templates to an enrolled class; UnknownLabelError if it is not enrolled.

        Examples
        --------
        >>> g.add_templates("alice", new_vectors)  # doctest: +SKIP
        """
        self._check_writable()
        label = _check_label(label)
        vecs = as_unit_vectors(vectors, self.dim)
        with self._writing() as store:
            self._apply(store.add(label, vecs), vecs)
            return len(vecs)

    def erase(self, label: str) -> int:
        """Remove a class and all its templates (store and index); return templates removed.

        Examples
        --------
        >>> g.erase("alice")  # doctest: +SKIP
        3
        """
        self._check_writable()
        label = _check_label(label)
        with self._writing() as store:
            change = store.erase(label)
            self._apply(change, np.empty((0, self.dim), np.float32))
            self._erasures += 1
            if self.auto_compact_after and self._erasures >= self.auto_compact_after and not self.rebuilding:
                try:  # (while a background rebuild runs, the next erase does it)
                    self._compact_locked(full=False)
                except MegaclassError:  # another process is reading: the next erase retries
                    pass
            return len(change.removed)

    def erased_tag(self, label: str) -> str:
        """What the gallery's logs keep of an erased label: a salted hash (``erased:<hex>``)."""
        with self._open() as store:
            return store.erased_tag(_check_label(label))

    # ------------------------------------------------------------------ maintenance
    #: run :meth:`compact` (its light form) after this many erasures by one handle (0: never)
    auto_compact_after = 64

    def compact(self, *, full: bool = True) -> None:
        """Make erasures final on disk: erased templates are purged from the index, the WAL
        is truncated and the snapshot rewritten (``full``, with ``VACUUM``: the file shrinks)
        or deleted (``full=False``, what automatic compaction does: cheap at any size)."""
        self._check_writable()
        self._cancel.set()  # a background rebuild would wait for the lock this holds: stop it first
        self.wait_for_index()
        with self._lock:
            self._compact_locked(full)

    def _compact_locked(self, full: bool) -> None:
        from .maintenance import compact

        compact(self, full=full)
        self._erasures = 0

    def check(self) -> dict:
        """Integrity report ``{"ok", "problems", "classes", "templates", ...}``."""
        from .maintenance import check

        return check(self)

    def tune(self, queries=None) -> dict:
        """Re-fit nprobe / efSearch (and re-ranked candidates) so that the best class of
        probes matches exact search on >= 99 % of them; returns the knobs, the recall, which
        probes (``tuned_by``), how many and its 95 % interval. ``queries``: 100 to 100k real
        probe vectors (not stored); None: the kept queries (:meth:`keep_queries`), else
        leave-one-out or calibrated probes. See :func:`~megaclass.gallery.maintenance.tune`."""
        from .maintenance import tune

        self._check_writable()
        return tune(self, queries)

    def monitor_recall(self, enabled: bool = True, *, rate: float | None = None) -> None:
        """Turn the live recall monitor on or off (on by default) and set the share of
        searched rows it re-runs exactly (default 0.01); kept as gallery settings. See
        :mod:`megaclass.gallery.recall`."""
        self._check_writable()
        with self._open() as store:
            self._recall.set_monitor(store, enabled, rate)

    def keep_queries(self, capacity: int) -> None:
        """Opt in to keeping the last ``capacity`` searched query vectors (encrypted with
        the gallery key when there is one; never returned by any API) for re-tuning; see
        :mod:`megaclass.gallery.reservoir`. :meth:`drop_queries` forgets them."""
        self._check_writable()
        with self._open() as store:
            self._recall.set_reservoir(store, capacity)

    def drop_queries(self) -> None:
        """Forget the kept queries (memory zeroed, file deleted) and stop keeping them."""
        self._check_writable()
        with self._open() as store:
            self._recall.set_reservoir(store, None)

    def export(self, out) -> Path:
        """Export to a folder (manifest.json + .npy files, templates in clear; no pickle)."""
        from .maintenance import export_gallery

        return export_gallery(self, out)

    @classmethod
    def import_from(cls, export_dir, path, *, key=None) -> Gallery:
        """Create a new gallery at ``path`` from :meth:`export` output."""
        from .maintenance import import_gallery

        return import_gallery(export_dir, path, key=key)

    # ------------------------------------------------------------------ reads
    def search(self, vectors, k: int = 5, *, where: dict | None = None,
               model: str | None = None) -> list[list[Match]]:
        """Best ``k`` distinct classes per query row, best first (one FAISS call per batch).

        A class scores by its best template's cosine similarity. Rows get fewer than ``k``
        matches when the gallery holds fewer classes (none when it is empty). ``where``
        keeps only classes whose meta has all the given key/value pairs (exact match),
        e.g. ``where={"site": "berlin"}``; the filter runs inside FAISS. ``model``: the
        fingerprint of the model that made ``vectors``; if the gallery's templates are of
        another model (e.g. re-embedded meanwhile), ModelMismatchError instead of an answer.

        Examples
        --------
        >>> g.search(queries, k=3)[0]  # doctest: +SKIP
        [Match(label='alice', score=0.93), Match(label='bob', score=0.41), ...]
        """
        if type(k) is not int or k < 1:
            raise ConfigError(f"k must be an int >= 1, got {k!r}")
        q = as_unit_vectors(vectors, self.dim, allow_empty=True)
        allowed = None
        with self._open() as store:  # closed check; catch up with other processes' writes
            if where:
                allowed = store.classes_where(_check_meta(where))
        with self._rw.read():  # searches run in parallel; writers wait for them
            if model is not None and self._model not in (None, model):
                raise ModelMismatchError(
                    f"gallery {self.path} holds templates of model {self._model}, the queries come "
                    f"from model {model}: load the gallery's model (it was re-embedded?)")
            found = self._index.search(q, k, allowed)
            label = self._labels.get
            out = [[Match(label(c), min(1.0, max(-1.0, s))) for c, s in zip(cids, sc, strict=True)]
                   for cids, sc in found]
        if allowed is None:  # the live recall monitor samples unfiltered searches
            self._recall.observe(q, [c[0] if c else -1 for c, _ in found])
        return out

    @property
    def model(self) -> str | None:
        """Fingerprint of the model that made the templates (None: not recorded)."""
        with self._open():
            return self._model

    def template_models(self) -> dict[str, int]:
        """Templates per model fingerprint as recorded row by row (one entry when consistent)."""
        with self._open() as store:
            return store.template_models()

    def reembed(self, model, source=None, **options) -> dict:
        """Re-make every template with another model, beside the live ones, then switch in one
        commit (resumable). See :func:`megaclass.gallery.reembed.reembed`."""
        from .reembed import reembed

        return reembed(self, model, source, **options)

    def templates(self, label: str) -> np.ndarray:
        """The class's templates as a ``(n, dim)`` float32 array (unit rows)."""
        label = _check_label(label)
        with self._open() as store:
            return store.class_templates(label)

    def labels(self) -> list[str]:
        """Enrolled labels, in enrollment order."""
        with self._open():
            return self._labels.labels()

    def class_meta(self, label: str) -> dict:
        """The meta dict stored with the class (a copy)."""
        label = _check_label(label)
        with self._open() as store:
            return store.class_meta(label)

    def __len__(self) -> int:
        with self._open():
            return len(self._labels)

    def __contains__(self, label) -> bool:
        with self._open() as store:
            return isinstance(label, str) and store.class_id(label) is not None

    @property
    def num_templates(self) -> int:
        """Total number of templates over all classes."""
        with self._open():
            return self._index.ntotal

    def get_setting(self, key: str, default=None):
        """A JSON value stored in the gallery's ``meta`` table (e.g. a threshold).

        Examples
        --------
        >>> g.set_setting("threshold", 0.42); g.get_setting("threshold")  # doctest: +SKIP
        0.42
        """
        _check_label(key, "setting key")
        with self._open() as store:
            return store.get_meta(key, default)

    def set_setting(self, key: str, value) -> None:
        """Store a JSON-serialisable ``value`` under ``key`` (reserved keys are refused)."""
        self._check_writable()
        _check_label(key, "setting key")
        if key in RESERVED_KEYS:
            raise ConfigError(f"setting {key!r} is reserved by the gallery")
        try:
            json.dumps(value, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise InvalidInputError(f"setting {key!r} is not JSON-serialisable: {exc}") from exc
        with self._open() as store:
            store.set_meta(key, value)

    def stats(self) -> dict:
        """Counts and sizes: classes, templates, dim, index type and tuning, disk bytes,
        approximate index memory, whether a background rebuild is running, ..."""
        with self._open() as store:
            return {"path": str(self.path), "classes": len(self._labels),
                    "templates": self._index.ntotal, "dim": self.dim,
                    "max_templates_per_class": self._index.max_per_class(),
                    **self._index.describe(), "encrypted": store.cipher is not None,
                    "disk_bytes": store.disk_bytes(), "index_memory_bytes": self._index.memory_bytes(),
                    "rebuilding": self.rebuilding, **self._recall.live(),
                    "last_seq": store.last_seq()}

    def __repr__(self) -> str:
        state = "closed" if self._store is None else f"{len(self._labels)} classes"
        return f"Gallery({str(self.path)!r}, dim={self.dim}, {state})"
