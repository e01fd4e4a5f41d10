"""The public :class:`Gallery`: enroll classes, search the best k classes for queries.

Works without torch: numpy, faiss, sqlite3 and the standard library only.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import ConfigError, InvalidInputError, MegaclassError, ModelMismatchError
from .change import Change
from .concurrency import IndexWhileCommitting
from .index_controls import IndexControls
from .inputs import check_label, check_meta, enroll_items
from .recall import RecallWatch
from .state import GalleryState
from .store import RESERVED_KEYS, Store
from .store_open import open_store
from .upkeep import IndexUpkeep
from .vectors import as_unit_vectors

EARLY_INDEX_MIN = 2048  # writes of this many templates are indexed while SQLite commits them


@dataclass(frozen=True)
class Match:
    """One search result: a class and the cosine similarity of its best template."""

    label: str
    score: float


class Gallery(IndexControls):
    """A directory of enrolled classes (labels with embedding templates), searchable by class.

    ``gallery.db`` (SQLite) is the source of truth; the FAISS index is derived from it and
    snapshotted to ``index.faiss`` on :meth:`save` / :meth:`close`. Each enroll / add /
    erase is one all-or-nothing transaction. One object may be shared among threads.
    Index maintenance and tuning (:meth:`compact`, :meth:`tune`, :meth:`check`, ...) come
    from :class:`~megaclass.gallery.index_controls.IndexControls`.

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

    def __init__(self, store: Store, *, read_only: bool = False, read_only_reason: str | None = None):
        """Use :meth:`Gallery.open`."""
        self._state = GalleryState(store, read_only=read_only, read_only_reason=read_only_reason)
        self._recall = RecallWatch(self._state)  # live recall monitor, query reservoir, tuning probes
        self._upkeep = IndexUpkeep(self._state, self._recall.probe_maker)  # background rebuilds
        self._erasures = 0
        try:
            self._recall.configure(store)
            self._state.attach(self._upkeep.build, self._upkeep.schedule)
        except BaseException:
            store.close()
            raise
        with self._state.writer_lock:
            self._upkeep.schedule()

    @property
    def state(self) -> GalleryState:
        """The live state (store, index, labels, locks) that the gallery's own modules
        (maintenance, re-embed, retained samples) work through; not a user API."""
        return self._state

    @property
    def path(self) -> Path:
        """The gallery's directory."""
        return self._state.path

    @property
    def dim(self) -> int:
        """The template dimension (a re-embed may change it)."""
        return self._state.dim

    @property
    def read_only(self) -> bool:
        return self._state.read_only

    @property
    def read_only_reason(self) -> str | None:
        """Why :attr:`read_only` is set (None when it is not)."""
        return self._state.read_only_reason

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
        commits on its next call). Writes then raise ReadOnlyGalleryError.

        Raises ConfigError (new gallery without ``dim``, or ``create=False``),
        DimensionMismatchError (``dim`` differs from an existing gallery's), and
        NotAGalleryError (a non-empty directory that is not a gallery, or a damaged db).

        Examples
        --------
        >>> g = Gallery.open("faces", dim=512)        # doctest: +SKIP
        >>> g = Gallery.open("faces", create=False)   # doctest: +SKIP
        """
        store, reason = open_store(path, dim=dim, create=create, key=key, index=index,
                                   read_only=read_only)
        return cls(store, read_only=reason is not None, read_only_reason=reason)

    def save(self) -> None:
        """Write the index snapshot (``index.faiss`` + ``index.json``) atomically."""
        self._check_writable()
        with self._state.session():
            self._state.save()
            self._recall.save()

    def close(self) -> None:
        """Save the snapshot if it is out of date and close the database. Idempotent."""
        self._upkeep.stop()  # an unfinished background rebuild is dropped (redone on next open)
        self._recall.stop()
        st = self._state
        with st.writer_lock:
            if st.closed:
                return
            try:
                if not st.read_only and not st.snapshot_current():
                    self.save()
                elif not st.read_only:
                    self._recall.save()
            finally:
                st.close()

    def __enter__(self) -> Gallery:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------------ writes
    def _apply(self, change: Change, vectors: np.ndarray,
               early: IndexWhileCommitting | None = None) -> None:
        """Mirror a committed store write into the derived state, then let the upkeep
        see whether the index now calls for a rebuild."""
        self._state.apply(change, vectors, early)
        self._upkeep.schedule()

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
        labels, vectors, counts, metas = enroll_items(items, self.dim)
        st = self._state
        with st.writing() as store:
            if not labels:
                return 0
            early = IndexWhileCommitting(st, vectors) if len(vectors) >= EARLY_INDEX_MIN else None
            try:
                change = store.enroll(labels, counts, vectors, metas, replace,
                                      on_ids=early.start if early is not None else None)
            except BaseException:
                if early is not None and not early.undo():
                    st.load()
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
        label = check_label(label)
        vecs = as_unit_vectors(vectors, self.dim)
        with self._state.writing() as store:
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
        label = check_label(label)
        with self._state.writing() as store:
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
        with self._state.session() as store:
            return store.erased_tag(check_label(label))

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
        st = self._state
        with st.session() as store:  # closed check; catch up with other processes' writes
            if where:
                allowed = store.classes_where(check_meta(where))
        with st.search_lock.read():  # searches run in parallel; writers wait for them
            if model is not None and st.model not in (None, model):
                raise ModelMismatchError(
                    f"gallery {self.path} holds templates of model {st.model}, the queries come "
                    f"from model {model}: load the gallery's model (it was re-embedded?)")
            found = st.index.search(q, k, allowed)
            label = st.labels.get
            out = [[Match(label(c), min(1.0, max(-1.0, s))) for c, s in zip(cids, sc, strict=True)]
                   for cids, sc in found]
        if allowed is None:  # the live recall monitor samples unfiltered searches
            self._recall.observe(q, [c[0] if c else -1 for c, _ in found])
        return out

    @property
    def model(self) -> str | None:
        """Fingerprint of the model that made the templates (None: not recorded)."""
        with self._state.session():
            return self._state.model

    def template_models(self) -> dict[str, int]:
        """Templates per model fingerprint as recorded row by row (one entry when consistent)."""
        with self._state.session() as store:
            return store.template_models()

    def reembed(self, model, source=None, **options) -> dict:
        """Re-make every template with another model, beside the live ones, then switch in one
        commit (resumable). See :func:`megaclass.gallery.reembed.reembed`."""
        from .reembed import reembed

        return reembed(self, model, source, **options)

    def templates(self, label: str) -> np.ndarray:
        """The class's templates as a ``(n, dim)`` float32 array (unit rows)."""
        label = check_label(label)
        with self._state.session() as store:
            return store.class_templates(label)

    def labels(self) -> list[str]:
        """Enrolled labels, in enrollment order."""
        with self._state.session():
            return self._state.labels.labels()

    def class_meta(self, label: str) -> dict:
        """The meta dict stored with the class (a copy)."""
        label = check_label(label)
        with self._state.session() as store:
            return store.class_meta(label)

    def __len__(self) -> int:
        with self._state.session():
            return len(self._state.labels)

    def __contains__(self, label) -> bool:
        with self._state.session() as store:
            return isinstance(label, str) and store.class_id(label) is not None

    @property
    def num_templates(self) -> int:
        """Total number of templates over all classes."""
        with self._state.session():
            return self._state.index.ntotal

    def get_setting(self, key: str, default=None):
        """A JSON value stored in the gallery's ``meta`` table (e.g. a threshold).

        Examples
        --------
        >>> g.set_setting("threshold", 0.42); g.get_setting("threshold")  # doctest: +SKIP
        0.42
        """
        check_label(key, "setting key")
        with self._state.session() as store:
            return store.get_meta(key, default)

    def set_setting(self, key: str, value) -> None:
        """Store a JSON-serialisable ``value`` under ``key`` (reserved keys are refused)."""
        self._check_writable()
        check_label(key, "setting key")
        if key in RESERVED_KEYS:
            raise ConfigError(f"setting {key!r} is reserved by the gallery")
        try:
            json.dumps(value, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise InvalidInputError(f"setting {key!r} is not JSON-serialisable: {exc}") from exc
        with self._state.session() as store:
            store.set_meta(key, value)

    def settings(self) -> dict:
        """Every setting kept with :meth:`set_setting` (reserved keys left out)."""
        with self._state.session() as store:
            return store.settings()

    def stats(self) -> dict:
        """Counts and sizes: classes, templates, dim, index type and tuning, disk bytes,
        approximate index memory, whether a background rebuild is running, ..."""
        st = self._state
        with st.session() as store:
            index = st.index
            return {"path": str(self.path), "classes": len(st.labels),
                    "templates": index.ntotal, "dim": self.dim,
                    "max_templates_per_class": index.max_per_class(),
                    **index.describe(), "encrypted": store.cipher is not None,
                    "disk_bytes": store.disk_bytes(), "index_memory_bytes": index.memory_bytes(),
                    "rebuilding": self.rebuilding, **self._recall.live(),
                    "last_seq": store.last_seq()}

    def __repr__(self) -> str:
        state = "closed" if self._state.closed else f"{len(self._state.labels)} classes"
        return f"Gallery({str(self.path)!r}, dim={self.dim}, {state})"
