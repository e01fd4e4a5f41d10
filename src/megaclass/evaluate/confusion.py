"""Sparse confusion: the most-confused (true, predicted) class pairs, never a dense C×C matrix.

With a million classes a confusion matrix has 10¹² cells; the errors of N queries touch
at most N of them. :func:`top_confusions` counts only the pairs that occur, keeps a few
example query indices per pair, and returns the ``n`` most frequent.

Example
-------
>>> top_confusions(["a", "a", "b", "b"], ["b", "b", "b", "a"], n=1)
[{'true': 'a', 'predicted': 'b', 'count': 2, 'examples': [0, 1]}]
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..errors import InvalidInputError


def top_confusions(y_true: Sequence, y_pred: Sequence, n: int = 20, examples: int = 3,
                   symmetric: bool = False) -> list[dict]:
    """The ``n`` most frequent wrong (true, predicted) pairs with counts and example indices.

    Parameters
    ----------
    y_true, y_pred : labels per query; a prediction of None (no answer) is not a confusion.
    n : number of pairs to return (ties broken by label order, so the result is stable).
    examples : query indices kept per pair (the first ones, in query order).
    symmetric : count (a, b) and (b, a) together as one unordered look-alike pair.

    Returns
    -------
    list of ``{"true", "predicted", "count", "examples"}`` dicts, most frequent first.
    """
    if len(y_true) != len(y_pred):
        raise InvalidInputError(f"{len(y_true)} true labels but {len(y_pred)} predictions")
    if n < 1 or examples < 0:
        raise InvalidInputError(f"n must be >= 1 and examples >= 0, got {n}, {examples}")
    counts: dict[tuple, int] = {}
    kept: dict[tuple, list[int]] = {}
    for i, (t, p) in enumerate(zip(y_true, y_pred, strict=True)):
        if p is None or p == t:
            continue
        key = tuple(sorted((t, p), key=str)) if symmetric else (t, p)
        counts[key] = counts.get(key, 0) + 1
        ex = kept.setdefault(key, [])
        if len(ex) < examples:
            ex.append(i)
    order = sorted(counts, key=lambda k: (-counts[k], str(k[0]), str(k[1])))[:n]
    return [{"true": k[0], "predicted": k[1], "count": counts[k], "examples": kept[k]}
            for k in order]


def confusion_counts(y_true: Sequence, y_pred: Sequence, labels: Sequence) -> dict[tuple, int]:
    """Every non-zero cell of the confusion matrix as ``{(true, predicted): count}`` (sparse).

    Diagonal cells are included; predictions of None are skipped. Useful to compare with a
    dense matrix on small cases (``sklearn.metrics.confusion_matrix``).
    """
    if len(y_true) != len(y_pred):
        raise InvalidInputError(f"{len(y_true)} true labels but {len(y_pred)} predictions")
    allowed = set(labels)
    out: dict[tuple, int] = {}
    pairs = np.array([(t, p) for t, p in zip(y_true, y_pred, strict=True)
                      if p is not None and t in allowed and p in allowed], dtype=object)
    for t, p in pairs:
        out[(t, p)] = out.get((t, p), 0) + 1
    return out
