"""Helpers for training and tuning an approximate index against exact search: a uniform
sample from a stream of chunks, exact top-1 over a stream, and the smallest search knob
that reaches a target recall."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import numpy as np

TARGET_RECALL = 0.99  # "auto"/IVF/HNSW: recall@1 vs exact that nprobe/efSearch must reach
TUNE_TARGET = 0.995  # what knobs are fitted to on probes: headroom for their sampling noise (see probes.py)
K_FACTORS = (8, 32, 128, 512)  # "...,RFlat": exact re-rank candidates per result, tried in turn


def uniform_sample(chunks: Iterable[tuple[np.ndarray, np.ndarray]], n: int, m: int,
                   rng: np.random.Generator, dim: int) -> tuple[np.ndarray, np.ndarray]:
    """``min(n, m)`` rows drawn uniformly without replacement from a stream of ``n`` rows:
    ``(their ids, the rows)``."""
    pick = np.sort(rng.choice(n, min(n, m), replace=False)) if n else np.empty(0, np.int64)
    out = np.empty((len(pick), dim), np.float32)
    ids = np.empty(len(pick), np.int64)
    at = got = 0
    for tids, vecs in chunks:
        lo, hi = np.searchsorted(pick, [at, at + len(vecs)])
        out[got: got + hi - lo] = vecs[pick[lo:hi] - at]
        ids[got: got + hi - lo] = np.asarray(tids)[pick[lo:hi] - at]
        got += hi - lo
        at += len(vecs)
    return ids[:got], out[:got]


def smallest_knob(recall_at: Callable[[int], float], start: int, limit: int,
                  target: float = TARGET_RECALL) -> tuple[int, float]:
    """Smallest search knob (nprobe, efSearch, ...; to within 1/16) whose recall reaches
    ``target``: doubling from ``start`` up to ``limit``, then bisection between the last
    miss and the first hit. Returns ``(knob, recall)``; the recall is below ``target`` only
    if even ``limit`` misses it."""
    low, knob = 0, start
    while (recall := recall_at(knob)) < target and knob < limit:
        low, knob = knob, min(limit, knob * 2)
    if recall >= target and low:
        while knob - low > max(1, knob // 16):
            mid = (low + knob) // 2
            if (r := recall_at(mid)) >= target:
                knob, recall = mid, r
            else:
                low = mid
    return knob, recall


def fit_knobs(recall_at: Callable[[int, int | None], float], start: int, limit: int, *,
              k_factors: Sequence[int] | None = None, target: float = TARGET_RECALL
              ) -> tuple[int, int | None, float]:
    """The search knob (nprobe, efSearch, ...) and re-rank ``k_factor`` to use: for each
    ``k_factor`` in turn (None: the index re-ranks nothing), :func:`smallest_knob` from
    ``start`` up to ``limit``, stopping at the first that reaches ``target`` (4-bit codes
    can be too coarse for any knob at a small ``k_factor``). ``recall_at(knob, k_factor)``
    measures. Returns ``(knob, k_factor, recall)``."""
    knob, k_factor, recall = start, None, 0.0
    for k_factor in k_factors or (None,):
        def at(v: int, kf: int | None = k_factor) -> float:  # this k_factor's recall at knob v
            return recall_at(v, kf)

        knob, recall = smallest_knob(at, start, limit, target)
        if recall >= target:
            break
    return knob, k_factor, recall


def exact_top1(queries: np.ndarray, chunks: Iterable[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
    """Template id of each query's exact best inner product, over a stream of chunks."""
    best = np.full(len(queries), -np.inf, dtype=np.float32)
    ids = np.full(len(queries), -1, dtype=np.int64)
    for tids, vecs in chunks:
        scores = queries @ np.ascontiguousarray(vecs, dtype=np.float32).T
        j = scores.argmax(axis=1)
        s = scores[np.arange(len(queries)), j]
        better = s > best
        best[better], ids[better] = s[better], np.asarray(tids)[j[better]]
    return ids
