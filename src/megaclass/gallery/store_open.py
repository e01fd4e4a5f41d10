"""Opening a gallery's store: create it, or open it read-write or read-only, with the
checks :meth:`Gallery.open <megaclass.gallery.Gallery.open>` documents."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

from ..errors import ConfigError, DimensionMismatchError, NotAGalleryError, ReadOnlyGalleryError
from .crypto import resolve_key
from .index_spec import check_spec
from .state import INDEX_SETTING
from .store import DB_NAME, Store


def open_store(path, *, dim: int | None, create: bool, key, index: str | None,
               read_only: bool) -> tuple[Store, str | None]:
    """The store at ``path`` (created when missing, ``dim`` required) and why it is
    read-only (None: it is writable)."""
    path = Path(os.fspath(path))
    key = resolve_key(key)
    if index is not None:
        check_spec(index, dim)  # FAISS's grammar (and the dim, when given) before touching anything
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
            try:
                check_spec(index, store.dim)
            except ConfigError:
                store.close()
                raise
            store.set_meta(INDEX_SETTING, index)
        return store, why if read_only else None
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
    return store, None
