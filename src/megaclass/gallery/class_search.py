"""Search of a :class:`~megaclass.gallery.index.ClassIndex`: template neighbours from FAISS
collapsed to the best ``k`` distinct classes, optionally restricted to some classes.

Re-rank depth. For an index with an exact re-rank stage (``...,RFlat``) the tuned
``k_factor`` means *candidates re-ranked per result class wanted*; neighbours fetched
beyond the wanted results (a class's other templates, tombstones, the probe itself when
tuning leaves one template out) each add one candidate, not ``k_factor`` more
(:func:`rerank_factor`). So a search for one class re-ranks about as many candidates
whatever the number of templates per class, and the tuning probes are measured at the
depth real searches use: the recall the gallery reports is the recall it delivers.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import faiss
import numpy as np

from .concurrency import threads_for
from .faiss_api import filter_params, hnsw_params, internal_selector, ivf_params, refine_params

if TYPE_CHECKING:
    from .index import ClassIndex

_FIRST_PASS_CAP = 4096  # neighbours per query in the first pass; short rows widen after
_PARAMS_CACHED = 64  # (wanted, fetched) pairs whose unfiltered search parameters are kept


def _collapse(cids: list[int], scores: list[float], k: int) -> tuple[list[int], list[float]]:
    """The first ``k`` distinct class ids (skipping -1) of a best-first hit list, with scores."""
    best_c: list[int] = []
    best_s: list[float] = []
    seen: set[int] | None = None if k <= 32 else set()  # a short list beats a set for small k
    for c, s in zip(cids, scores, strict=True):
        if c < 0 or c in (best_c if seen is None else seen):
            continue
        if seen is not None:
            seen.add(c)
        best_c.append(c)
        best_s.append(s)
        if len(best_c) == k:
            break
    return best_c, best_s


def rerank_factor(k_factor: float, wanted: int, fetched: int) -> float:
    """Per-call FAISS ``k_factor`` for a search that fetches ``fetched`` neighbours to
    return ``wanted`` results: ``k_factor`` candidates per wanted result plus one per
    extra neighbour fetched, spread over ``fetched`` (FAISS re-ranks ``int(fetched *
    k_factor)`` candidates; the half keeps the product from rounding down).

    >>> int(2 * rerank_factor(128, 1, 2))   # one class among 2 fetched: 128 + 1
    129
    """
    pool = k_factor * wanted + max(0, fetched - wanted)
    return max(1.0, (pool + 0.5) / fetched)


def search_classes(class_index: ClassIndex, queries: np.ndarray, k: int,
                   allowed: np.ndarray | None = None) -> list[tuple[list[int], list[float]]]:
    """Best ``k`` distinct classes per query row: ``[(class ids, scores), ...]`` (lists).

    Searches ``k * max templates per class`` template neighbours (which always holds
    ``k`` distinct classes when the index has them; capped at 4096 to bound memory),
    keeps each class's best score, and doubles the search for rows that came back short.
    ``allowed`` (class ids) restricts the search to those classes, inside FAISS. An exact
    re-rank stage re-ranks ``k_factor`` candidates per class wanted (:func:`rerank_factor`).
    """
    nq = len(queries)
    out: list[tuple[list[int], list[float]]] = [([], [])] * nq
    cmap = class_index.class_map
    selector, total, nclasses = None, int(class_index.index.ntotal), cmap.num_classes
    if allowed is not None:
        tids = cmap.templates_of(allowed)
        if not len(tids):
            return out
        selector = faiss.IDSelectorBatch(tids)
        total, nclasses = len(tids), len(np.unique(cmap.lookup(tids)))
    if total - class_index.tombstones <= 0 or nq == 0:
        return out
    kk = min(total, max(k, min(k * max(1, class_index.max_per_class()), _FIRST_PASS_CAP)))
    if class_index.tombstones and allowed is None:
        kk = min(total, int(kk * (1 + 2 * class_index.tombstones / total)) + 1)
    want = min(k, nclasses)
    rows = list(range(nq))
    while rows:
        batch = queries if len(rows) == nq else queries[rows]
        params = _search_params(class_index, selector, min(k, kk), kk)
        with threads_for(len(rows)):
            scores, ids = class_index.index.search(batch, kk, params=params)
        cids = cmap.classes_of(ids)  # FAISS pads short results with -1; tombstones map to -1 too
        short = []
        for j, r in enumerate(rows):
            found = _collapse(cids[j].tolist(), scores[j].tolist(), k)
            out[r] = found
            if len(found[0]) < want and kk < total:
                short.append(r)
        rows = short
        kk = min(total, kk * 2)
    return out


def _search_params(class_index: ClassIndex, selector: faiss.IDSelector | None, wanted: int,
                   fetched: int) -> faiss.SearchParameters | None:
    """Search parameters for fetching ``fetched`` neighbours to return ``wanted`` classes:
    the re-rank depth of :func:`rerank_factor`, restricted to ``selector`` if given, with
    the tuned ``nprobe`` / ``efSearch``. None (the index's own settings) when neither a
    re-rank stage nor a selector needs parameters."""
    refine = class_index.refine
    if refine is None and selector is None:
        return None
    if selector is None:  # the same few (wanted, fetched) pairs every search: built once per knob setting
        cache = class_index.search_params
        params = cache.get((wanted, fetched))
        if params is None:
            if len(cache) >= _PARAMS_CACHED:
                cache.clear()
            params = cache[wanted, fetched] = _new_search_params(class_index, None, wanted, fetched)
        return params
    return _new_search_params(class_index, selector, wanted, fetched)


def _new_search_params(class_index: ClassIndex, selector: faiss.IDSelector | None, wanted: int,
                       fetched: int) -> faiss.SearchParameters | None:
    refine = class_index.refine
    # below a re-rank stage the base search filters: it needs the id map's internal ids
    sel = selector if refine is None or selector is None else internal_selector(class_index.index, selector)
    base = _knob_params(class_index.knob_index, sel)
    if refine is None:
        return base
    return refine_params(rerank_factor(refine.k_factor, wanted, fetched), base, keep=(selector, sel, base))


def _knob_params(index: faiss.Index, selector: faiss.IDSelector | None) -> faiss.SearchParameters:
    """Search parameters for ``index`` (not a refine stage) with its current ``nprobe`` /
    ``efSearch``, restricted to ``selector`` if given."""
    ivf = faiss.try_extract_index_ivf(index)
    if ivf is not None:
        return ivf_params(ivf.nprobe, selector)
    if isinstance(index, faiss.IndexHNSW):
        return hnsw_params(index.hnsw.efSearch, selector)
    return faiss.SearchParameters() if selector is None else filter_params(selector)
