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
- ``calibrated``: synthetic probes, templates plus noise shaped like the templates' own
  spread, whose (best score, gap) pairs follow those observed on real searches (the live
  monitor's exact re-runs), or the :data:`PRIOR` near-tie pairs before any was observed.

:func:`wilson` gives the 95 % interval reported with the recall; :func:`min_probes` says
how many probes a target needs before one miss stops deciding it.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np

from .vectors import unit_rows

Chunks = Callable[[], Iterable[tuple[np.ndarray, np.ndarray]]]
#: ``(sample ids, sample vectors, template ids, class ids, read) -> Probes`` (see :func:`default_probes`)
ProbeMaker = Callable[[np.ndarray, np.ndarray, np.ndarray, np.ndarray, Chunks], "Probes"]
_SCORES_MAX = 1 << 24  # scores held at once by exact_topk (64 MiB)
LOO_MIN_SHARE = 0.5  # leave-one-out probes when at least this share of templates have a sibling

PROBES = 2000  # probes per tuning: the 95 % interval at recall 0.99 is +-0.0045
#: (best score, best-vs-second gap) pairs used before real searches were observed: real
#: glyph embeddings' near-ties (medians: best 0.81, gap 0.046 with a 2,080-step encoder;
#: 0.86 and 0.018 with a 520-step one), spread so the default probes are at least as hard
PRIOR = np.array([[s, g] for s in (0.72, 0.81, 0.88) for g in (0.01, 0.02, 0.046, 0.10)], np.float32)


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
    calibrated_to: str | None = None  # calibrated probes: "prior" or "<n> observed searches"

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
    for tids, vecs in chunks:
        tids = np.asarray(tids)
        vecs = np.ascontiguousarray(vecs, dtype=np.float32)
        step = max(1, _SCORES_MAX // max(len(tids), 1))  # bounded memory: query blocks
        for a in range(0, n, step):
            b = min(n, a + step)
            scores = queries[a:b] @ vecs.T
            if exclude is not None:
                scores[tids[None, :] == exclude[a:b, None]] = -np.inf
            kk = min(k, scores.shape[1])
            rows = np.arange(b - a)[:, None]
            top = np.argpartition(-scores, kk - 1, axis=1)[:, :kk]
            s = np.concatenate([best_s[a:b], scores[rows, top]], axis=1)
            i = np.concatenate([best_i[a:b], tids[top]], axis=1)
            order = np.argsort(-s, axis=1, kind="stable")[:, :k]
            best_s[a:b], best_i[a:b] = s[rows, order], i[rows, order]
    return best_i, best_s


def _rows_by_id(chunks: Iterable[tuple[np.ndarray, np.ndarray]], ids: np.ndarray, dim: int) -> np.ndarray:
    """Vectors of the template ``ids`` (any order), read from one pass over the chunks."""
    uniq, back = np.unique(ids, return_inverse=True)
    found = np.zeros((len(uniq), dim), np.float32)
    for tids, vecs in chunks:
        hit = np.isin(tids, uniq)
        if hit.any():
            found[np.searchsorted(uniq, tids[hit])] = vecs[hit]
    return found[back]


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
               pairs: np.ndarray | None = None, pool: int = 3) -> Probes:
    """``n`` synthetic probes calibrated to ``pairs`` of (best score, best-vs-rival gap)
    observed on real searches (default :data:`PRIOR`).

    A probe is a sampled template plus noise shaped like the templates' own spread
    (covariance ``S`` of the sample: ``t + sigma S^1/2 z``), not isotropic noise: real
    queries vary along the directions in which embeddings vary, towards their rivals.
    ``sigma`` is set per probe so that its cosine to its source follows the observed best
    scores. From a pool of ``pool * n`` such probes, ``n`` are kept whose exact gaps follow
    the observed gaps (nearest unused gap for each observed one). Measured on 200,000 glyph
    embeddings (README, "Gallery"): isotropic probes tuned to 0.99 gave 0.89 on real
    queries, these 0.99.
    """
    source = "prior" if pairs is None or not len(pairs) else f"{len(pairs)} observed searches"
    pairs = PRIOR if pairs is None or not len(pairs) else np.asarray(pairs, np.float32)
    dim = sample.shape[1]
    spread = np.cov(sample[rng.choice(len(sample), min(len(sample), 20_000), replace=False)].T)
    w, v = np.linalg.eigh(np.atleast_2d(spread))
    root = ((v * np.sqrt(np.maximum(w, 0))) @ v.T).astype(np.float32)  # S^1/2
    m = pool * n
    src = rng.integers(0, len(sample), m)
    best = np.clip(pairs[rng.integers(0, len(pairs), m), 0], 0.05, 0.999)
    sigma = np.sqrt(1 / best ** 2 - 1) / math.sqrt(max(float(np.trace(np.atleast_2d(spread))), 1e-12))
    q = sample[src] + sigma[:, None].astype(np.float32) * (rng.standard_normal((m, dim), np.float32) @ root)
    q = np.ascontiguousarray(unit_rows(q.astype(np.float32)))
    ids, scores = exact_topk(q, read(), 8)
    cls = np.where(ids >= 0, _class_of(np.where(ids >= 0, ids, tids[0]), tids, cids), -1)
    gap = _gaps(cls, scores)
    keep = _match(gap, pairs[rng.integers(0, len(pairs), n), 1])
    return Probes("calibrated", q[keep], cls[keep, 0], calibrated_to=source)


def _gaps(cls: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """Best score minus the best score of another class (1.0 if none among the top k)."""
    rival = (cls != cls[:, :1]) & (cls >= 0)
    first = np.argmax(rival, axis=1)
    rows = np.arange(len(cls))
    return np.where(rival[rows, first], scores[:, 0] - scores[rows, first], 1.0)


def _match(have: np.ndarray, want: np.ndarray) -> np.ndarray:
    """Indices into ``have``, one per ``want``, each the nearest value not used yet."""
    order = np.argsort(have)
    free = list(order)
    values = have[order].tolist()
    out = []
    for g in np.sort(want).tolist():
        j = min(bisect.bisect_left(values, g), len(values) - 1)
        if j > 0 and abs(values[j - 1] - g) <= abs(values[j] - g):
            j -= 1
        out.append(free.pop(j))
        values.pop(j)
    return np.sort(np.array(out, dtype=np.int64))


def real(queries: np.ndarray, tids: np.ndarray, cids: np.ndarray, read: Chunks, kind: str) -> Probes:
    """Real query vectors (given to ``tune`` or kept by the reservoir) with exact answers."""
    best, _ = exact_topk(queries, read(), 1)
    return Probes(kind, queries, _class_of(best[:, 0], tids, cids))
