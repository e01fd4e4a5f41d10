"""The template -> class map a :class:`~megaclass.gallery.index.ClassIndex` collapses
template hits with: a dense ``int64`` array indexed by template id (``-1``: no class,
i.e. never enrolled, removed, tombstoned or not yet published) and live templates per
class, which bound how many template neighbours a search of ``k`` classes needs."""

from __future__ import annotations

import numpy as np


class TemplateClassMap:
    """Dense ``template id -> class id`` array with per-class template counts.

    Examples
    --------
    >>> m = TemplateClassMap()
    >>> m.reset(np.array([1, 2, 5]), np.array([7, 7, 9]))
    >>> m.classes_of(np.array([[5, 2, -1]])).tolist(), m.num_classes, m.max_per_class()
    ([[9, 7, -1]], 2, 2)
    """

    def __init__(self) -> None:
        self._cid = np.full(1024, -1, dtype=np.int64)
        self._per_class = np.zeros(1024, dtype=np.int32)  # live templates by class id
        self._nclasses = 0
        self._max_per_class = 0
        self._max_stale = False

    def reset(self, tids: np.ndarray, cids: np.ndarray) -> None:
        """Map exactly ``tids`` to ``cids`` (everything else to no class)."""
        size = max(1024, int(tids.max()) + 1 if len(tids) else 0)
        self._cid = np.full(size, -1, dtype=np.int64)
        self._cid[tids] = cids
        self._per_class = np.zeros(1024, dtype=np.int32)
        self._nclasses = self._max_per_class = 0
        self._max_stale = False
        self._count(cids, +1)

    def reserve(self, top: int) -> None:
        """Make room for template ids up to ``top`` (new ids map to no class)."""
        if top >= len(self._cid):
            grown = np.full(max(top + 1, 2 * len(self._cid)), -1, dtype=np.int64)
            grown[: len(self._cid)] = self._cid
            self._cid = grown

    def assign(self, tids: np.ndarray, cids: np.ndarray) -> None:
        """Map ``tids`` (reserved, unmapped) to ``cids``."""
        self._cid[tids] = cids
        self._count(cids, +1)

    def unassign(self, tids: np.ndarray) -> np.ndarray:
        """Map ``tids`` to no class; returns the class each had (``-1``: none)."""
        cids = self._cid[tids]
        self._cid[tids] = -1
        self._count(cids[cids >= 0], -1)
        return cids

    def lookup(self, tids: np.ndarray) -> np.ndarray:
        """Class of each template id (ids must be >= 0 and reserved)."""
        return self._cid[tids]

    def classes_of(self, ids: np.ndarray) -> np.ndarray:
        """Class of each FAISS result id; ``-1`` for FAISS's padding (-1) and unmapped ids."""
        cids = self._cid[np.maximum(ids, 0)]
        cids[ids < 0] = -1
        return cids

    def templates_of(self, classes: np.ndarray) -> np.ndarray:
        """Template ids (int64, ascending) mapped to any of ``classes``."""
        return np.flatnonzero(np.isin(self._cid, classes)).astype(np.int64)

    def mapped(self, ids: np.ndarray) -> np.ndarray:
        """The ids of ``ids`` that map to a class."""
        ids = ids[ids < len(self._cid)]
        return ids[self._cid[ids] >= 0]

    @property
    def num_classes(self) -> int:
        """Classes with at least one live template."""
        return self._nclasses

    @property
    def nbytes(self) -> int:
        return int(self._cid.nbytes)

    def max_per_class(self) -> int:
        """Most live templates of any class."""
        if self._max_stale:
            self._max_per_class = int(self._per_class.max())
            self._max_stale = False
        return self._max_per_class

    def _count(self, cids: np.ndarray, sign: int) -> None:
        """Add (``+1``) or remove (``-1``) one template of each entry of ``cids``."""
        if not len(cids):
            return
        uniq, n = np.unique(cids, return_counts=True)
        if uniq[-1] >= len(self._per_class):
            grown = np.zeros(max(int(uniq[-1]) + 1, 2 * len(self._per_class)), dtype=np.int32)
            grown[: len(self._per_class)] = self._per_class
            self._per_class = grown
        before = self._per_class[uniq]
        after = np.maximum(before + sign * n.astype(np.int32), 0)
        self._per_class[uniq] = after
        self._nclasses += int(np.count_nonzero(after)) - int(np.count_nonzero(before))
        if sign > 0:
            self._max_per_class = max(self._max_per_class, int(after.max()))
        else:
            self._max_stale = True
