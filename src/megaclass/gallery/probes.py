"""Tuning probes that look like real queries, and the confidence of the recall they measure.

An approximate index is tuned until recall@1 against exact search reaches the target *on
probes*; the recall users get is the one *on their queries*. Measured on 200,000 glyph
classes embedded by a trained encoder (README, "Gallery"), isotropic noisy copies of
templates overstated recall (0.99 reported, 0.91 real): real queries sit in near-ties
(best score ~0.8, best-vs-second gap ~0.05) that random noise in 128-256 dimensions never
produces. So probes come, best first, from:

- ``reservoir``: recent real queries kept by an opt-in :class:`~megaclass.gallery.reservoir.QueryReservoir`;
- ``leave-one-out``: templates of classes with two or more templates, each searched against
  the rest (a fresh drawing of an enrolled class, which is what a mated query is);
- ``calibrated``: synthetic probes placed between a template and its nearest rival template
  so that their (best score, gap) pairs follow those observed on real searches (the live
  monitor's exact re-runs), or the :data:`PRIOR` near-tie pairs before any was observed.

:func:`wilson` gives the 95 % interval reported with the recall; :func:`min_probes` says
how many probes a target needs before one miss stops deciding it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np

from .vectors import unit_rows

Chunks = Callable[[], Iterable[tuple[np.ndarray, np.ndarray]]]
#: ``(sample ids, sample vectors, template ids, class ids, read) -> Probes`` (see :func:`default_probes`)
ProbeMaker = Callable[[np.ndarray, np.ndarray, np.ndarray, np.ndarray, Chunks], "Probes"]
LOO_MIN_SHARE = 0.5  # leave-one-out probes when at least this share of templates have a sibling

PROBES = 2000  # probes per tuning: the 95 % interval at recall 0.99 is +-0.0045
#: (best score, best-vs-second gap) pairs used before real searches were observed: the
#: quartiles of near-ties measured on real glyph embeddings (best 0.81, gap 0.046 at the
#: median), so the default probes are at least as hard as such queries
PRIOR = np.array([[s, g] for s in (0.72, 0.81, 0.88) for g in (0.015, 0.046, 0.10)], np.float32)


@dataclass
class Probes:
    """Query vectors with their exact answer, and what they are.

    ``truth``: class id of each probe's exact best template; ``exclude``: the template
    each probe must not match (itself, leave-one-out), or None.
    """

    kind: str
    queries: np.ndarray
    truth: np.ndarray
    exclude: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.queries)


def default_probes(sample_ids: np.ndarray, sample: np.ndarray, tids: np.ndarray, cids: np.ndarray,
                   read: Chunks, *, pairs: np.ndarray | None = None, n: int = PROBES,
                   seed: int = 0) -> Probes:
    """Leave-one-out probes when most templates (:data:`LOO_MIN_SHARE`) belong to classes
    with two or more, else :func:`calibrated` probes (to ``pairs``, default :data:`PRIOR`)."""
    from .tuning import TARGET_RECALL

    rng = np.random.default_rng(seed)
    _, inverse, counts = np.unique(cids, return_inverse=True, return_counts=True)
    siblings = int(np.sum(counts[inverse] >= 2))
    if siblings >= max(min_probes(TARGET_RECALL), LOO_MIN_SHARE * len(tids)):
        found = leave_one_out(tids, cids, read, sample.shape[1], n, rng)
        if found is not None:
            return found
    return calibrated(sample_ids, sample, tids, cids, read, n, rng, pairs)


def wilson(hits: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval of a proportion (95 % by default): ``(low, high)``."""
    if n <= 0:
        return 0.0, 1.0
    p = hits / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def min_probes(target: float) -> int:
    """Fewest probes that can tell ``target`` from one miss more: ``1 / (1 - target)``."""
    return math.ceil(1 / (1 - target) - 1e-9)


def exact_topk(queries: np.ndarray, chunks: Iterable[tuple[np.ndarray, np.ndarray]], k: int,
               exclude: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Template ids and scores of each query's exact best ``k`` inner products over a stream
    of ``(ids, vectors)`` chunks, skipping template ``exclude[i]`` for query ``i``."""
    n = len(queries)
    best_s = np.full((n, k), -np.inf, dtype=np.float32)
    best_i = np.full((n, k), -1, dtype=np.int64)
    rows = np.arange(n)[:, None]
    for tids, vecs in chunks:
        tids = np.asarray(tids)
        scores = queries @ np.ascontiguousarray(vecs, dtype=np.float32).T
        if exclude is not None:
            scores[tids[None, :] == exclude[:, None]] = -np.inf
        kk = min(k, scores.shape[1])
        top = np.argpartition(-scores, kk - 1, axis=1)[:, :kk]
        s = np.concatenate([best_s, scores[rows, top]], axis=1)
        i = np.concatenate([best_i, tids[top]], axis=1)
        order = np.argsort(-s, axis=1, kind="stable")[:, :k]
        best_s, best_i = s[rows, order], i[rows, order]
    return best_i, best_s


def _rows_by_id(chunks: Iterable[tuple[np.ndarray, np.ndarray]], ids: np.ndarray, dim: int) -> np.ndarray:
    """Vectors of the template ``ids`` (any order), read from one pass over the chunks."""
    order = np.argsort(ids)
    sorted_ids = ids[order]
    out = np.empty((len(ids), dim), np.float32)
    for tids, vecs in chunks:
        hit = np.isin(tids, sorted_ids)
        if hit.any():
            pos = np.searchsorted(sorted_ids, tids[hit])
            out[order[pos]] = vecs[hit]
    return out


def leave_one_out(tids: np.ndarray, cids: np.ndarray, read: Chunks, dim: int, n: int,
                  rng: np.random.Generator) -> Probes | None:
    """Up to ``n`` templates of classes with >= 2 templates, each to be searched against
    the others (its exact answer excludes itself); None if no class has two templates."""
    _, inverse, counts = np.unique(cids, return_inverse=True, return_counts=True)
    eligible = tids[counts[inverse] >= 2]
    if not len(eligible):
        return None
    pick = np.sort(rng.choice(eligible, min(n, len(eligible)), replace=False))
    q = _rows_by_id(read(), pick, dim)
    best, _ = exact_topk(q, read(), 1, exclude=pick)
    return Probes("leave-one-out", q, _class_of(best[:, 0], tids, cids), pick)


def _class_of(template_ids: np.ndarray, tids: np.ndarray, cids: np.ndarray) -> np.ndarray:
    return cids[np.searchsorted(tids, template_ids)]


def calibrated(sample_ids: np.ndarray, sample: np.ndarray, tids: np.ndarray, cids: np.ndarray,
               read: Chunks, n: int, rng: np.random.Generator,
               pairs: np.ndarray | None = None) -> Probes:
    """``n`` synthetic probes whose (best score, gap to the best rival) pairs are drawn from
    ``pairs`` (observed on real searches; default :data:`PRIOR`).

    Each is ``a t + b u + c r``: ``t`` a sampled template, ``u`` its nearest template of
    another class (``t . u = rho``), ``r`` a random direction orthogonal to both, with
    ``a, b`` solving ``q . t = s``, ``q . u = s - g`` and ``c`` making ``|q| = 1``. Pairs a
    template cannot reach (its rival too far for such a small gap) are redrawn on another
    template, so the pairs keep their observed distribution.
    """
    pairs = PRIOR if pairs is None or not len(pairs) else np.asarray(pairs, np.float32)
    own = _class_of(sample_ids, tids, cids)
    ids, _ = exact_topk(sample, read(), 8, exclude=sample_ids)
    rival_cls = np.where(ids >= 0, _class_of(np.where(ids >= 0, ids, tids[0]), tids, cids), -1)
    other = (rival_cls != own[:, None]) & (rival_cls >= 0)
    first = np.argmax(other, axis=1)
    rival = ids[np.arange(len(ids)), first]
    ok = other[np.arange(len(ids)), first]
    t_all, u_ids = sample[ok], rival[ok]
    if not len(t_all):  # one class only: plain noisy copies
        return _noisy(sample, tids, cids, read, n, rng)
    u_all = _rows_by_id(read(), u_ids, sample.shape[1])
    rho = np.clip(np.sum(t_all * u_all, axis=1), -0.999, 0.999)
    out = np.empty((n, sample.shape[1]), np.float32)
    got = 0
    for _ in range(64):
        m = n - got
        j = rng.integers(0, len(t_all), 4 * m)
        s, g = pairs[rng.integers(0, len(pairs), 4 * m)].T
        r_ = rho[j]
        a = (s - r_ * (s - g)) / (1 - r_ * r_)
        b = ((s - g) - r_ * s) / (1 - r_ * r_)
        norm2 = a * a + b * b + 2 * a * b * r_
        fit = np.flatnonzero(norm2 < 1)[:m]
        if len(fit):
            t, u = t_all[j[fit]], u_all[j[fit]]
            noise = rng.normal(size=t.shape).astype(np.float32)
            e1 = t  # noise orthogonal to t and u (Gram-Schmidt on the pair)
            e2 = unit_rows(u - np.sum(u * e1, axis=1, keepdims=True) * e1)
            noise -= np.sum(noise * e1, axis=1, keepdims=True) * e1
            noise -= np.sum(noise * e2, axis=1, keepdims=True) * e2
            noise = unit_rows(noise)
            c = np.sqrt(1 - norm2[fit])[:, None]
            out[got: got + len(fit)] = a[fit, None] * t + b[fit, None] * u + c * noise
            got += len(fit)
        if got == n:
            break
    q = np.ascontiguousarray(unit_rows(out[:got]))
    best, _ = exact_topk(q, read(), 1)
    return Probes("calibrated", q, _class_of(best[:, 0], tids, cids))


def _noisy(sample: np.ndarray, tids: np.ndarray, cids: np.ndarray, read: Chunks, n: int,
           rng: np.random.Generator) -> Probes:
    """Noisy copies of templates (cosine ~0.8 to their source): the old synthetic probes."""
    pick = rng.choice(len(sample), n, replace=len(sample) < n)
    q = sample[pick] + rng.normal(scale=0.75 / math.sqrt(sample.shape[1]), size=(n, sample.shape[1]))
    q = np.ascontiguousarray(unit_rows(q.astype(np.float32)))
    best, _ = exact_topk(q, read(), 1)
    return Probes("synthetic", q, _class_of(best[:, 0], tids, cids))


def real(queries: np.ndarray, tids: np.ndarray, cids: np.ndarray, read: Chunks, kind: str) -> Probes:
    """Real query vectors (given to ``tune`` or kept by the reservoir) with exact answers."""
    best, _ = exact_topk(queries, read(), 1)
    return Probes(kind, queries, _class_of(best[:, 0], tids, cids))
