"""Closed-set identification metrics: every query's class is enrolled.

Example
-------
>>> top_k_accuracy([["a", "b"], ["c", "a"]], ["a", "a"], ks=(1, 2))
{'top1': 0.5, 'top2': 1.0}
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..errors import InvalidInputError


def true_ranks(candidates: Sequence[Sequence[str]], truth: Sequence[str]) -> np.ndarray:
    """1-based rank of the true label in each candidate list, 0 where it is absent."""
    if len(candidates) != len(truth):
        raise InvalidInputError(
            f"{len(candidates)} candidate lists but {len(truth)} true labels"
        )
    ranks = np.zeros(len(truth), dtype=np.int64)
    for i, (cands, t) in enumerate(zip(candidates, truth, strict=True)):
        for r, c in enumerate(cands, start=1):
            if c == t:
                ranks[i] = r
                break
    return ranks


def top_k_accuracy(candidates: Sequence[Sequence[str]], truth: Sequence[str],
                   ks: Sequence[int] = (1, 5)) -> dict[str, float]:
    """Fraction of queries whose true label is among the first k candidates, for each k."""
    if len(truth) == 0:
        raise InvalidInputError("top-k accuracy needs at least one query")
    ranks = true_ranks(candidates, truth)
    return {f"top{k}": float(np.mean((ranks >= 1) & (ranks <= k))) for k in ks}
