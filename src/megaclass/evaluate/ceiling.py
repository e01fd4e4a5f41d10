"""How separable are glyph classes at all? Collisions between class ids, and the ceiling they set.

Two class ids *collide* when their drawings are no more different from each other than
drawings of one class are among themselves: then no model, however long trained, can
tell them apart from one drawing, and rank-1 identification has a ceiling below 100 %.

The measurement (:func:`collision_study`) uses a trained encoder only as a finder and a
judge, on the generator's own drawings:

1. ``candidates`` classes are enrolled as the mean embedding of ``template_drawings``
   drawings; for each of ``queries`` other classes, a fresh drawing is searched and its
   ``k`` nearest candidate classes kept (collisions, if any, are among the nearest).
2. For each such pair (A, B), ``drawings`` new drawings of each are embedded; the pair is
   a collision when at least half of A's drawings are as close to B's mean as to the mean
   of A's other drawings (from one drawing, A is a coin flip between A and B).
3. ``p_pair`` = collisions / (queries x candidates) estimates the chance that two random
   class ids collide. The generator then holds about ``1 / p_pair`` distinguishable
   classes (``log2(1 / p_pair)`` bits of class entropy), and in a gallery of ``N``
   classes a query has a colliding neighbour with probability ``1 - exp(-p_pair * N)``;
   half of those queries are lost at rank 1 even for a perfect model (a coin flip between
   two indistinguishable classes), which bounds rank-1 at ``1 - (1 - exp(-p_pair N)) / 2``.

The judge is a trained model, so a collision here means "indistinguishable to this
model": a better model can only find fewer, and the ceiling is an upper bound on what is
lost to the data. :func:`collision_pairs` returns the colliding pairs for inspection
(render them with :func:`megaclass.data.glyphs.render_glyphs`).
"""

from __future__ import annotations

import math
import time

import numpy as np
import torch

from ..data.glyphs import GlyphSource


def _embed_classes(encoder, ids: np.ndarray, per: int, seed: int, chunk: int = 2048) -> np.ndarray:
    """Mean embedding (renormalised) of ``per`` drawings of each class id."""
    out = np.empty((len(ids), encoder.dim), np.float32)
    step = max(1, chunk // per)
    for lo in range(0, len(ids), step):
        block = ids[lo:lo + step]
        images, _ = GlyphSource.batch(block, per, seed=seed)
        with torch.inference_mode():
            e = encoder.embed(images).reshape(len(block), per, -1).mean(1)
        out[lo:lo + len(block)] = torch.nn.functional.normalize(e, dim=1).numpy()
    return out


def _embed_drawings(encoder, ids: np.ndarray, per: int, seed: int, chunk: int = 2048) -> np.ndarray:
    """Embeddings ``(len(ids), per, dim)`` of ``per`` drawings of each class id."""
    out = np.empty((len(ids), per, encoder.dim), np.float32)
    step = max(1, chunk // per)
    for lo in range(0, len(ids), step):
        block = ids[lo:lo + step]
        images, _ = GlyphSource.batch(block, per, seed=seed)
        with torch.inference_mode():
            out[lo:lo + len(block)] = encoder.embed(images).reshape(len(block), per, -1).numpy()
    return out


def collision_study(encoder, *, candidates: int = 100_000, queries: int = 1000, k: int = 10,
                    drawings: int = 8, template_drawings: int = 3, candidate_start: int = 20_000_000,
                    query_start: int = 30_000_000, gallery_sizes=(1000, 10_000, 100_000, 1_000_000),
                    log=None) -> dict:
    """Estimate the pairwise collision rate of glyph class ids and the rank-1 ceiling it implies."""
    import faiss

    t0 = time.perf_counter()
    cand_ids = np.arange(candidate_start, candidate_start + candidates)
    if log:
        log(f"embedding {candidates:,} candidate classes x {template_drawings} drawings")
    templates = _embed_classes(encoder, cand_ids, template_drawings, seed=1)
    index = faiss.IndexFlatIP(templates.shape[1])
    index.add(templates)
    q_ids = np.arange(query_start, query_start + queries)
    probes = _embed_classes(encoder, q_ids, 1, seed=2)
    scores, nearest = index.search(probes, k)
    if log:
        log(f"judging {queries:,} x {k} nearest pairs with {drawings} drawings each")
    judged = np.unique(np.concatenate([q_ids, cand_ids[nearest.ravel()]]))
    draws = _embed_drawings(encoder, judged, drawings, seed=3)  # (classes, drawings, dim)
    row = {int(c): i for i, c in enumerate(judged)}
    pairs = []
    for qi, cid in enumerate(q_ids):
        a = draws[row[int(cid)]]
        own = a.sum(0, keepdims=True) - a  # leave-one-out template of A for each drawing
        own /= np.linalg.norm(own, axis=1, keepdims=True)
        own_score = (a * own).sum(1)
        for rank, j in enumerate(nearest[qi]):
            other = draws[row[int(cand_ids[j])]].mean(0)
            other /= np.linalg.norm(other)
            confused = float(np.mean(a @ other >= own_score))
            if confused >= 0.5:
                pairs.append({"query": int(cid), "candidate": int(cand_ids[j]), "rank": rank,
                              "confused": confused, "search_score": float(scores[qi, rank])})
    p_pair = len(pairs) / (queries * candidates)
    colliding_queries = len({p["query"] for p in pairs})
    # the upper end of the two-sided 95 % Poisson interval of the pair count (3.7 when none found)
    from scipy.stats import chi2

    upper = 0.5 * chi2.ppf(0.975, 2 * len(pairs) + 2) / (queries * candidates)
    ceiling = {}
    for n in gallery_sizes:
        hit = 1 - math.exp(-p_pair * n)
        ceiling[str(n)] = {"p_colliding_neighbour": hit, "rank1_ceiling": 1 - hit / 2,
                           "rank1_ceiling_pessimistic": 1 - (1 - math.exp(-upper * n)) / 2}
    return {"candidates": candidates, "queries": queries, "k": k, "drawings": drawings,
            "collisions": len(pairs), "queries_with_a_collision": colliding_queries,
            "p_pair": p_pair, "p_pair_upper95": upper,
            "distinguishable_classes": (1 / p_pair) if p_pair else None,
            "class_entropy_bits": math.log2(1 / p_pair) if p_pair else None,
            "class_entropy_bits_lower95": math.log2(1 / upper),
            "ceiling": ceiling, "pairs": pairs, "seconds": time.perf_counter() - t0}


def collision_pairs(study: dict, limit: int = 12) -> list[tuple[int, int]]:
    """The (query, candidate) class ids of the strongest collisions, for rendering side by side."""
    ranked = sorted(study["pairs"], key=lambda p: -p["confused"])
    return [(p["query"], p["candidate"]) for p in ranked[:limit]]


def rank1_by_group(encoder, *, sizes=(10_000, 100_000), queries: int = 3000, attribute: str = "strokes",
                   template_drawings: int = 3, start: int = 20_000_000, cache=None, log=None) -> dict:
    """Rank-1 of mated searches per class group at growing gallery sizes (exact search).

    The gallery is classes ``start .. start + max(sizes)``, each the mean embedding of
    ``template_drawings`` drawings; the first ``queries`` of them are searched with one
    fresh drawing each, in nested galleries of the first ``n`` classes. Queries are split
    by the glyph attribute ``attribute`` (:mod:`megaclass.data.glyph_attributes`), so the
    result shows which kinds of class the errors at scale come from. ``cache`` (a folder)
    keeps the gallery's embeddings in 100k blocks, so a longer run resumes.
    """
    from pathlib import Path

    import faiss

    from ..data.glyph_attributes import glyph_attributes

    t0 = time.perf_counter()
    total = max(sizes)
    block = 100_000
    parts = []
    for lo in range(0, total, block):
        n = min(block, total - lo)
        path = Path(cache) / f"templates_{start + lo}_{n}_{template_drawings}.npy" if cache else None
        if path is not None and path.exists():
            parts.append(np.load(path))
            continue
        if log:
            log(f"embedding classes {lo:,}-{lo + n:,} x {template_drawings} drawings")
        emb = _embed_classes(encoder, np.arange(start + lo, start + lo + n), template_drawings, seed=1)
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp.npy")
            np.save(tmp, emb)
            tmp.replace(path)
        parts.append(emb)
    templates = np.concatenate(parts)
    q_ids = np.arange(start, start + queries)
    probes = _embed_classes(encoder, q_ids, 1, seed=2)
    groups = np.array([a.get(attribute, "unknown") for a in glyph_attributes(q_ids)])
    out = {"attribute": attribute, "queries": queries, "template_drawings": template_drawings,
           "group_share": {g: float(np.mean(groups == g)) for g in sorted(set(groups))}}
    by_size: dict[str, dict[str, float]] = {}
    out["sizes"] = by_size
    index = faiss.IndexFlatIP(templates.shape[1])  # grown size by size: each template added once
    for n in sorted(sizes):
        index.add(templates[index.ntotal:n])
        m = min(n, queries)  # a gallery smaller than the query set holds only the first n
        _, top = index.search(probes[:m], 1)
        hit, grp = top[:, 0] == np.arange(m), groups[:m]
        row = {"all": float(hit.mean())}
        row.update({g: float(hit[grp == g].mean()) for g in sorted(set(grp))})
        by_size[str(n)] = row
        if log:
            log(f"  {n:>9,} classes: rank-1 " + "  ".join(f"{k} {v:.3f}" for k, v in row.items()))
    out["seconds"] = time.perf_counter() - t0
    return out
