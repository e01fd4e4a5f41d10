"""The gallery interface: what :class:`~megaclass.Recognizer`, the service, ``evaluate``
and the CLI use of a gallery, as a :class:`typing.Protocol`.

The local SQLite + FAISS :class:`~megaclass.gallery.Gallery` implements it; another
backend (e.g. Milvus) implements the same methods with the same semantics, stated in
each docstring, and the rest of megaclass works on it unchanged. Maintenance that only
makes sense for one backend (``tune``, ``compact``, ``reembed``, recall monitoring) is
that backend's own and not part of the protocol.

Shared semantics every backend honours:

- A *class* is a label (non-empty string without control characters) with one or more
  *templates*: L2-normalised ``dim``-dimensional float32 rows. Vectors given to a write
  are normalised by the gallery; a zero or non-finite row raises InvalidInputError.
- Each write (enroll, enroll_many, add_templates, erase) is all-or-nothing: when it
  raises, the gallery is unchanged. A write that returned is durable.
- A class scores by its *best* template's cosine similarity (inner product of unit rows).
- Errors are :mod:`megaclass.errors` classes: DuplicateLabelError, UnknownLabelError,
  InvalidInputError, ConfigError, ReadOnlyGalleryError, ModelMismatchError, and
  GalleryClosedError for any call after :meth:`GalleryProtocol.close`.

Examples
--------
>>> import tempfile
>>> from megaclass.gallery import Gallery, GalleryProtocol
>>> with Gallery.open(tempfile.mkdtemp(), dim=4) as g:
...     isinstance(g, GalleryProtocol)
True
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np

if TYPE_CHECKING:
    from .gallery import Match


@runtime_checkable
class GalleryProtocol(Protocol):
    """A store of classes with templates, searched by class."""

    @property
    def path(self) -> Path:
        """A local directory that belongs to this gallery (the SQLite gallery's own folder;
        a remote backend names a local folder for side files such as the service's audit
        database)."""
        ...

    @property
    def dim(self) -> int:
        """The template dimension."""
        ...

    @property
    def read_only(self) -> bool:
        """Writes raise ReadOnlyGalleryError when true."""
        ...

    # ---------------------------------------------------------------- writes
    def enroll(self, label: str, vectors: Any, meta: dict | None = None, *,
               replace: bool = False) -> int:
        """Enroll ``label`` with the rows of ``vectors`` (one or more) and a JSON ``meta``
        dict; return the templates stored. An enrolled label raises DuplicateLabelError
        unless ``replace``, which swaps its templates and meta in one transaction."""
        ...

    def enroll_many(self, items: Iterable[tuple], *, replace: bool = False) -> int:
        """Enroll ``(label, vectors[, meta])`` items in one transaction; return the
        templates stored. Every item is validated before anything is written; a label
        twice in ``items`` or (without ``replace``) already enrolled changes nothing."""
        ...

    def add_templates(self, label: str, vectors: Any) -> int:
        """Add templates to an enrolled class (UnknownLabelError if it is not); return
        how many were added."""
        ...

    def erase(self, label: str) -> int:
        """Remove a class and every template of it from store and index (searches never
        return it again); return the templates removed. UnknownLabelError if absent."""
        ...

    def erased_tag(self, label: str) -> str:
        """What logs may keep of ``label`` once erased: a salted hash ``erased:<hex>``,
        the same for the same label in this gallery, meaningless elsewhere."""
        ...

    # ---------------------------------------------------------------- reads
    def search(self, vectors: Any, k: int = 5, *, where: dict | None = None,
               model: str | None = None) -> list[list[Match]]:
        """Per query row, the best ``k`` *distinct classes*, best first, each scored by its
        best template (clipped to [-1, 1]). Fewer than ``k`` when the gallery (or the
        filter) has fewer classes; an empty list for an empty gallery. ``where``: only
        classes whose meta holds every given key with an equal value. ``model``: the
        fingerprint of the model that made the queries; when the gallery records another
        (:attr:`model`), ModelMismatchError instead of an answer. ``k`` < 1: ConfigError."""
        ...

    def templates(self, label: str) -> np.ndarray:
        """The class's templates, ``(n, dim)`` float32 unit rows; UnknownLabelError if absent."""
        ...

    def labels(self) -> list[str]:
        """Enrolled labels in enrollment order."""
        ...

    def class_meta(self, label: str) -> dict:
        """A copy of the meta stored with the class; UnknownLabelError if absent."""
        ...

    def __len__(self) -> int:
        """Number of enrolled classes."""
        ...

    def __contains__(self, label: object) -> bool:
        """Whether ``label`` is enrolled (False for a non-string)."""
        ...

    @property
    def num_templates(self) -> int:
        """Templates over all classes."""
        ...

    @property
    def model(self) -> str | None:
        """Fingerprint of the model that made the templates (None: not recorded)."""
        ...

    # ---------------------------------------------------------------- settings
    def get_setting(self, key: str, default: Any = None) -> Any:
        """A JSON value kept with the gallery (the calibrated ``threshold``, the
        ``model_fingerprint``, the template mode, ...), or ``default``."""
        ...

    def set_setting(self, key: str, value: Any) -> None:
        """Keep a JSON-serialisable ``value`` under ``key`` durably (InvalidInputError if it
        is not JSON; ConfigError for a key the backend reserves for itself)."""
        ...

    def settings(self) -> dict:
        """Every setting kept with :meth:`set_setting` (not the backend's reserved ones):
        what an export or a migration to another backend carries over."""
        ...

    # ---------------------------------------------------------------- operations
    def stats(self) -> dict:
        """Counts and sizes; at least ``classes``, ``templates``, ``dim``, ``index`` (what
        answers searches, as a short string), ``encrypted`` and ``disk_bytes``."""
        ...

    def check(self) -> dict:
        """Integrity report without modifying anything: at least ``ok`` (bool),
        ``problems`` (list of strings), ``classes`` and ``templates``."""
        ...

    def export(self, out: str | os.PathLike) -> Path:
        """Write every class to the empty folder ``out`` in the backend-neutral export
        format (``manifest.json`` + ``templates.npy`` + ``template_class.npy``, templates
        in clear, no pickle; see :mod:`megaclass.gallery.maintenance`); return ``out``.
        Any backend can import what another exported."""
        ...

    @classmethod
    def import_from(cls, export_dir: str | os.PathLike, path: Any, *, key: Any = None
                    ) -> GalleryProtocol:
        """A new gallery of this backend at ``path`` (a backend may take a URI) holding
        everything in :meth:`export` output, in one transaction; ConfigError if ``path``
        already holds classes."""
        ...

    def close(self) -> None:
        """Flush and release the gallery; idempotent. Later calls raise GalleryClosedError."""
        ...

    def __enter__(self) -> GalleryProtocol:
        ...

    def __exit__(self, *exc: object) -> None:
        """:meth:`close`."""
        ...
