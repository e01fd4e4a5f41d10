"""Index specs: FAISS's own factory grammar, and the ``auto`` policy with its constants.

A spec is a FAISS ``index_factory`` string (``"Flat"``, ``"IVF4096,Flat"``,
``"IVF64,SQ8,RFlat"``, ``"HNSW32"``, ``"OPQ32,IVF1024,PQ32"``, ...; FAISS documents the
grammar) for an inner-product index, or ``"auto"``: exact ``Flat`` up to
:data:`AUTO_EXACT_MAX` templates, then ``IVF<nlist>,PQ<M>x4fs,RFlat`` (4-bit fast-scan
codes re-ranked exactly; ``IVF<nlist>,Flat`` when D is not a multiple of 8). The
measurements behind the constants are in ``docs/bench/auto_index.md``.

Examples
--------
>>> resolve_spec("auto", 1_000), resolve_spec("auto", 2_000_000, 256)
('Flat', 'IVF1024,PQ32x4fs,RFlat')
>>> check_spec("IVF64,SQ8,RFlat", 128)
'IVF64,SQ8,RFlat'
"""

from __future__ import annotations

import functools
import math
import re

import faiss

from ..errors import ConfigError

# "auto" uses exact search up to this many templates. Chosen on real embeddings (issue 20
# part 2; docs/bench/auto_index.md): exact costs ~4 ms a query at 50k (one thread, loaded
# box) and grows linearly (14 ms at 200k), while the IVF-PQ re-ranked index reaches recall@1
# 0.99 on real queries in 0.05-0.1 ms at 25k-200k templates (14-134x less)
AUTO_EXACT_MAX = 50_000
AUTO_NLIST_MIN = 256
AUTO_NLIST_MAX = 65536
AUTO_POINTS_PER_LIST = 39  # k-means needs this many training points per centroid
AUTO_COARSE_CODES_MAX = 2_000_000  # "auto": PQ<dim/8> codes up to this many templates, PQ<dim/4> beyond
AUTO_MIN_SUBQUANTIZERS = 32  # "auto": 4-bit codes of at least 128 bits
GRAMMAR_DIM = 1920  # checks a spec given without a dim (2^7 * 15: most PQ splits divide it)


def check_spec(spec, dim: int | None = None) -> str:
    """``spec`` if FAISS's ``index_factory`` builds it for ``dim``-d inner-product vectors
    (``auto`` always passes), else ConfigError with FAISS's reason. Without ``dim`` only
    the grammar is checked (a PQ split that needs a dim is checked once it is known).
    The gallery wraps every index in ``IndexIDMap2`` itself, so ``IDMap`` is refused."""
    if not isinstance(spec, str) or not spec:
        raise ConfigError(f"an index spec must be a non-empty string, got {spec!r}")
    if spec == "auto":
        return spec
    if "IDMap" in spec:
        raise ConfigError(f"unsupported index spec {spec!r}: the gallery wraps every index in "
                          "IndexIDMap2 itself; give the index without IDMap")
    why = _factory_error(spec, dim or GRAMMAR_DIM)
    if why is not None and (dim is not None or "could not parse" in why):
        raise ConfigError(f"unsupported index spec {spec!r}: FAISS's index_factory says: {why} "
                          "(e.g. 'auto', 'Flat', 'IVF4096,Flat', 'IVF4096,SQ8', 'IVF64,SQ8,RFlat', "
                          "'IVF4096,PQ64x4fs,RFlat', 'HNSW32')")
    return spec


@functools.lru_cache(maxsize=128)
def _factory_error(spec: str, dim: int) -> str | None:
    """Why ``index_factory(dim, spec, inner product)`` fails (None: it builds)."""
    try:
        faiss.index_factory(dim, spec, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as exc:
        found = re.search(r"\.(?:cpp|h):\d+: (.*)", str(exc), re.S)
        return (found.group(1) if found else str(exc)).strip()
    return None


def resolve_spec(spec: str, n: int, dim: int | None = None) -> str:
    """The concrete factory string for ``spec`` at ``n`` templates of ``dim``: ``spec``
    itself (checked with :func:`check_spec`), or what ``auto`` picks.

    ``auto``: ``Flat`` up to :data:`AUTO_EXACT_MAX` templates; above, an IVF index with
    ``nlist`` the power of two nearest ``sqrt(n)``, at most ``n / 39``, whose lists hold
    4-bit fast-scan PQ codes (:func:`auto_subquantizers`) re-ranked with the exact vectors.
    """
    if check_spec(spec, dim) != "auto":
        return spec
    if n <= AUTO_EXACT_MAX:
        return "Flat"
    nlist = min(2 ** round(math.log2(math.sqrt(n))),
                2 ** math.floor(math.log2(max(n / AUTO_POINTS_PER_LIST, 1))))
    nlist = min(max(nlist, AUTO_NLIST_MIN), AUTO_NLIST_MAX)
    if dim and dim % 8 == 0:
        return f"IVF{nlist},PQ{auto_subquantizers(dim, n)}x4fs,RFlat"
    return f"IVF{nlist},Flat"


def auto_subquantizers(dim: int, n: int) -> int:
    """4-bit sub-quantizers of ``auto``'s codes: one per 8 dimensions up to
    :data:`AUTO_COARSE_CODES_MAX` templates, one per 4 beyond, at least
    :data:`AUTO_MIN_SUBQUANTIZERS`; the nearest count that divides ``dim``."""
    want = max(dim // (8 if n <= AUTO_COARSE_CODES_MAX else 4), AUTO_MIN_SUBQUANTIZERS)
    return next(m for m in range(min(want, dim), dim + 1) if dim % m == 0)


@functools.lru_cache(maxsize=128)
def min_train(spec: str) -> int:
    """Templates needed to train ``spec`` (0: no training): 39 per IVF list, 39 per PQ
    centroid (16 for 4-bit codes, 256 for 8-bit), and 39 for anything else FAISS must
    train (e.g. the scalar quantizer of ``HNSW32,SQ8``)."""
    m = re.search(r"IVF(\d+)", spec)
    need = AUTO_POINTS_PER_LIST * int(m.group(1)) if m else 0
    if "PQ" in spec:
        need = max(need, (16 if "x4" in spec else 256) * AUTO_POINTS_PER_LIST)
    if not need and spec != "Flat" and _factory_error(spec, GRAMMAR_DIM) is None:
        if not faiss.index_factory(GRAMMAR_DIM, spec, faiss.METRIC_INNER_PRODUCT).is_trained:
            need = AUTO_POINTS_PER_LIST
    return need
