"""One entry point from a gallery *name* to a gallery object: a folder (the local SQLite +
FAISS gallery), ``milvus://host:port/collection`` (a Milvus server or cluster) or
``milvus-lite://file.db`` (Milvus Lite). The CLI, the service and
:class:`~megaclass.Recognizer` open galleries through :func:`open_gallery`.

Examples
--------
>>> g = open_gallery("faces", dim=128)                                # doctest: +SKIP
>>> g = open_gallery("milvus://127.0.0.1:19530/faces", dim=128)       # doctest: +SKIP
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from ..errors import ConfigError
from .protocol import GalleryProtocol

_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")


def gallery_arg(text: str) -> Path | str:
    """The CLI's ``-g`` value: a Path for a folder, the string itself for a URI (a Path would
    fold ``//`` and lose it)."""
    return text if _SCHEME.match(str(text)) else Path(text)


def is_uri(spec) -> bool:
    return isinstance(spec, str) and bool(_SCHEME.match(spec))


def open_gallery(spec, *, dim: int | None = None, key=None, create: bool = True,
                 read_only: bool = False, token: str | None = None) -> GalleryProtocol:
    """The gallery named by ``spec`` (a folder path or URI); ``dim`` to create a new one.

    ``key`` is the local gallery's encryption key; with a Milvus URI it is refused
    (MilvusKeyError: Milvus keeps vectors in clear, encryption at rest is its storage's).
    ``token``: Milvus credentials (default ``$MEGACLASS_MILVUS_TOKEN``). An unknown URI
    scheme raises ConfigError.
    """
    if isinstance(spec, GalleryProtocol):
        return spec
    if is_uri(spec):
        found = _SCHEME.match(spec)
        if found is None:
            raise ConfigError(f"not a gallery URI: {spec!r}")
        scheme = found.group(1)
        if scheme in ("milvus", "milvus-lite"):
            from .milvus import MilvusGallery

            return MilvusGallery.open(spec, dim=dim, key=key, create=create, token=token,
                                      read_only=read_only)
        raise ConfigError(f"unknown gallery URI scheme {scheme!r} in {spec!r}: use a folder, "
                          "milvus://host:port/collection or milvus-lite://file.db")
    from .gallery import Gallery

    return Gallery.open(Path(os.fspath(spec)), dim=dim, key=key, create=create, read_only=read_only)


def side_folder(spec) -> Path:
    """The local folder of a gallery: the folder itself, or a Milvus gallery's side folder
    (the service keeps its keys and audit database there)."""
    if is_uri(spec):
        from .milvus.connect import local_folder, parse_uri

        return local_folder(parse_uri(spec, token=""))
    return Path(os.fspath(spec))


def gallery_exists(spec) -> bool:
    """Whether a local gallery exists at ``spec``; a URI counts as existing (the backend
    says otherwise when opened with ``create=False``)."""
    from .store import DB_NAME

    return is_uri(spec) or (Path(os.fspath(spec)) / DB_NAME).exists()
