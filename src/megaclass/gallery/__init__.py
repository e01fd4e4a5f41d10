"""Enrollable gallery: classes (labels) with embedding templates, searched by class.

A gallery is a directory holding ``gallery.db`` (SQLite, the source of truth) and an
``index.faiss`` snapshot derived from it. Import works without torch.

Examples
--------
>>> import numpy as np
>>> from megaclass.gallery import Gallery
>>> with Gallery.open("my-gallery", dim=128) as g:       # doctest: +SKIP
...     g.enroll("alice", np.random.randn(3, 128))
...     g.search(np.random.randn(2, 128), k=5)
"""

from .gallery import Gallery, Match, as_unit_vectors
from .protocol import GalleryProtocol

__all__ = ["Gallery", "GalleryProtocol", "Match", "as_unit_vectors"]
