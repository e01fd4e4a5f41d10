"""Typed wrappers for the FAISS Python calls whose stub disagrees with the Python API.

FAISS ships an ``__init__.pyi`` that describes the SWIG C++ signatures, not the Python
wrappers around them: there ``remove_ids`` takes no id array, the search-parameter classes
take no keyword arguments, ``SearchParametersHNSW`` and ``PyCallbackIOWriter`` do not exist,
``IDSelectorTranslated`` takes no ``Int64Vector`` and a SWIG object cannot carry a Python
attribute. The gallery makes those calls only through the functions here, so the rest of
``gallery/`` is type-checked against the stub as it is and the few places where the stub
is wrong are in this one module.

>>> import faiss
>>> params = ivf_params(16, faiss.IDSelectorRange(0, 10))
>>> params.nprobe
16
"""

from __future__ import annotations

from collections.abc import Callable

import faiss
import numpy as np


def ivf_params(nprobe: int, sel: faiss.IDSelector | None = None) -> faiss.SearchParameters:
    """Search parameters for an IVF index: ``nprobe`` lists, restricted to ``sel`` if given."""
    params = faiss.SearchParametersIVF()
    params.nprobe = int(nprobe)
    if sel is not None:
        params.sel = sel  # FAISS keeps a reference to the selector on assignment
    return params


def hnsw_params(ef_search: int, sel: faiss.IDSelector | None = None) -> faiss.SearchParameters:
    """Search parameters for an HNSW index: ``efSearch``, restricted to ``sel`` if given."""
    params = faiss.SearchParametersHNSW()  # type: ignore[attr-defined]  # missing from the stub
    params.efSearch = int(ef_search)
    if sel is not None:
        params.sel = sel
    return params


def filter_params(sel: faiss.IDSelector) -> faiss.SearchParameters:
    """Search parameters that only restrict the search to ``sel`` (any index type)."""
    params = faiss.SearchParameters()
    params.sel = sel
    return params


def refine_params(k_factor: float, base: faiss.SearchParameters,
                  keep: object) -> faiss.SearchParameters:
    """Search parameters for ``IndexRefine``: ``k_factor`` candidates per result re-ranked
    exactly, ``base`` passed to the base index. ``keep`` (the SWIG objects ``base`` points
    to) is held by the returned object, because they must outlive the search."""
    params = faiss.IndexRefineSearchParameters()
    params.k_factor = float(k_factor)
    params.base_index_params = base
    params._keep = keep  # type: ignore[attr-defined]  # a Python attribute on the SWIG proxy
    return params


def remove_ids(index: faiss.Index, ids: np.ndarray) -> int:
    """Remove the vectors with these ids (what the Python ``index.remove_ids(array)`` does;
    the stub only knows the selector form). Returns how many were removed."""
    return int(index.remove_ids(faiss.IDSelectorBatch(np.ascontiguousarray(ids, dtype=np.int64))))


def internal_selector(index: faiss.IndexIDMap2, sel: faiss.IDSelector) -> faiss.IDSelector:
    """``sel`` (over the ids ``index`` maps to) as a selector over the wrapped index's
    internal ids: what a filter inside the wrapped index needs. It references ``sel``."""
    # The stub types the id map as an array; the C++ constructor takes the std::vector
    # (an Int64Vector), as IndexIDMap2.id_map is.
    return faiss.IDSelectorTranslated(index.id_map, sel)  # type: ignore[arg-type]


def callback_writer(write: Callable[[bytes], None]) -> faiss.IOWriter:
    """A FAISS writer that hands each block it writes to ``write`` (``del`` it to flush)."""
    writer: faiss.IOWriter = faiss.PyCallbackIOWriter(write)  # type: ignore[attr-defined]
    return writer
