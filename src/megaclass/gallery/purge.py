"""Removing vectors for real from an ``IndexIDMap2`` over an IVF index (with or without
an exact re-rank stage), so that erased templates leave memory and the next snapshot
without re-training the index.

FAISS's own ``IndexIDMap2.remove_ids`` assumes that the wrapped index renumbers its
vectors after a removal, as ``IndexFlat`` does; ``IndexIVF`` keeps the old internal ids
in its lists, so the two go out of step and search returns the wrong templates (checked
in ``tests/test_gallery_purge.py``), and ``IndexRefine`` cannot remove at all. Here the
removal is done layer by layer: the IVF lists drop the entries and their remaining ids
are renumbered, the exact re-rank vectors (an ``IndexFlat``) are compacted, and the
id map is rewritten: one pass over the ids and vectors, where a rebuild from the store
reads every template, re-trains and re-tunes. Fast-scan lists are refilled from the
re-rank vectors instead (see :func:`remove_positions`). Graph indexes (HNSW) cannot
drop nodes: :func:`remove_positions` returns False and the caller rebuilds.
"""

from __future__ import annotations

import faiss
import numpy as np


def _renumber_lists(ivf: faiss.IndexIVF, removed: np.ndarray) -> None:
    """Internal ids above removed positions move down by the number removed below them."""
    lists = ivf.invlists
    if lists is None:  # no lists hold no ids (an IVF index that holds vectors has them)
        return
    for list_no in range(ivf.nlist):
        size = lists.list_size(list_no)
        if size:
            ids = faiss.rev_swig_ptr(lists.get_ids(list_no), size)  # a writable view
            ids -= np.searchsorted(removed, ids)


def _fast_scan(ivf: faiss.IndexIVF) -> bool:
    return isinstance(faiss.downcast_index(ivf), faiss.IndexIVFFastScan)  # lists in SIMD blocks


def _refill_lists(base: faiss.Index, vectors: np.ndarray, chunk: int = 1 << 16) -> None:
    """Empty a trained IVF index and add ``vectors`` again (no training)."""
    base.reset()
    for i in range(0, len(vectors), chunk):
        base.add(np.ascontiguousarray(vectors[i:i + chunk]))


def can_remove_in_place(index: faiss.IndexIDMap2) -> bool:
    """Whether :func:`remove_positions` works without re-adding every vector (its cost is
    then one pass over the ids, not an assignment of every vector to its list)."""
    inner = faiss.downcast_index(index.index)
    if isinstance(inner, faiss.IndexRefine):
        inner = faiss.downcast_index(inner.base_index)
    if isinstance(inner, faiss.IndexFlat):
        return True
    ivf = faiss.try_extract_index_ivf(inner)
    return ivf is not None and not _fast_scan(ivf)


def remove_positions(index: faiss.IndexIDMap2, positions: np.ndarray) -> bool:
    """Drop the vectors at internal ``positions`` (sorted, unique) from ``index``; False
    (and nothing changed) if its type cannot drop vectors.

    Fast-scan lists (4-bit PQ in blocks) are not edited in place: with FAISS 1.15, vectors
    added after a ``remove_ids`` on them are not found again (checked in the tests), so
    with an exact re-rank stage the lists are refilled from its vectors instead (the
    coarse assignment of every vector, no training); without one, False.
    """
    if not len(positions):
        return True
    positions = np.ascontiguousarray(positions, dtype=np.int64)
    inner = faiss.downcast_index(index.index)
    selector = faiss.IDSelectorBatch(positions)
    if isinstance(inner, faiss.IndexRefine):
        base = faiss.downcast_index(inner.base_index)
        refine = faiss.downcast_index(inner.refine_index)
        ivf = faiss.try_extract_index_ivf(base)
        if ivf is None or not isinstance(refine, faiss.IndexFlat):
            return False
        if _fast_scan(ivf):
            refine.remove_ids(selector)
            _refill_lists(base, faiss.rev_swig_ptr(refine.get_xb(), refine.ntotal * refine.d)
                          .reshape(refine.ntotal, refine.d))
        else:
            base.remove_ids(selector)
            _renumber_lists(ivf, positions)
            refine.remove_ids(selector)  # compacts, like the id map below
        inner.ntotal = refine.ntotal
    elif isinstance(inner, faiss.IndexFlat):
        inner.remove_ids(selector)
    elif (ivf := faiss.try_extract_index_ivf(inner)) is not None and not _fast_scan(ivf):
        inner.remove_ids(selector)
        _renumber_lists(ivf, positions)
    else:
        return False
    keep = np.delete(faiss.vector_to_array(index.id_map), positions)
    faiss.copy_array_to_vector(keep, index.id_map)
    index.ntotal = len(keep)
    index.construct_rev_map()
    return True


def scrub_positions(index: faiss.IndexIDMap2, positions: np.ndarray) -> bool:
    """Overwrite the exact re-rank vectors stored at ``positions`` with zeros, in place,
    leaving the index structure as it is: the cheap way to get erased templates' bytes out
    of memory and the next snapshot when removing them would mean re-adding every vector
    (re-rank vectors only score candidates, and tombstones are skipped anyway). False for
    other types: an HNSW graph navigates through its stored vectors, tombstones included,
    so zeroing them would cost recall; there only a rebuild clears them."""
    inner = faiss.downcast_index(index.index)
    if not isinstance(inner, faiss.IndexRefine):
        return False
    flat = faiss.downcast_index(inner.refine_index)
    if not isinstance(flat, faiss.IndexFlat):
        return False
    if len(positions):
        xb = faiss.rev_swig_ptr(flat.get_xb(), flat.ntotal * flat.d).reshape(flat.ntotal, flat.d)
        xb[np.asarray(positions, dtype=np.int64)] = 0.0
    return True
