"""Closed-set per-class metrics for millions of classes: precision, recall, F1, frequency buckets.

Everything is computed from integer-coded labels with ``bincount``: memory is O(N + C),
never O(C²). A prediction of ``None`` (the query was rejected or had no candidate) counts
as a miss for its true class and as a false positive for no class.

Undefined values are explicit: a class never predicted has precision ``None``; a class
with no true queries has recall ``None``; averages skip undefined values and say how many
they skipped (scikit-learn's ``zero_division=np.nan`` convention).

Example
-------
>>> r = classification_report(["a", "a", "b", "c"], ["a", "b", "b", None])
>>> r.macro["f1"], r.micro["precision"]
(0.444..., 0.666...)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from ..errors import InvalidInputError


def encode_labels(y_true: Sequence, y_pred: Sequence, labels: Sequence | None = None):
    """Integer codes for true and predicted labels; predictions of None (or unseen labels
    when ``labels`` is given) get code -1. Returns ``(classes, true_codes, pred_codes)``."""
    if len(y_true) != len(y_pred):
        raise InvalidInputError(f"{len(y_true)} true labels but {len(y_pred)} predictions")
    if len(y_true) == 0:
        raise InvalidInputError("per-class metrics need at least one query")
    if any(t is None for t in y_true):
        raise InvalidInputError("true labels must not be None")
    if labels is None:
        seen = set(y_true) | {p for p in y_pred if p is not None}
        try:
            classes = sorted(seen)
        except TypeError:  # mixed label types
            classes = sorted(seen, key=str)
    else:
        classes = list(dict.fromkeys(labels))
        if not classes:
            raise InvalidInputError("labels is empty")
    code = {c: i for i, c in enumerate(classes)}
    t = np.fromiter((code.get(x, -1) for x in y_true), dtype=np.int64, count=len(y_true))
    p = np.fromiter((code.get(x, -1) for x in y_pred), dtype=np.int64, count=len(y_pred))
    return classes, t, p


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    out = np.full(num.shape, np.nan)
    ok = den > 0
    out[ok] = num[ok] / den[ok]
    return out


def _avg(values: np.ndarray, weights: np.ndarray | None = None) -> float | None:
    ok = ~np.isnan(values)
    if weights is not None:
        ok &= weights > 0
    if not ok.any():
        return None
    w = None if weights is None else weights[ok]
    return float(np.average(values[ok], weights=w))


def _none(x: float) -> float | None:
    return None if np.isnan(x) else float(x)


@dataclass
class ClassificationReport:
    """Per-class precision / recall / F1 / support and their macro, micro, weighted averages.

    Attributes
    ----------
    classes : the class labels, aligned with the per-class arrays.
    precision, recall, f1 : float arrays, NaN where undefined (see module docstring).
    support : number of true queries per class.
    predicted : number of rank-1 predictions per class.
    macro, micro, weighted : dicts with ``precision``, ``recall``, ``f1`` (None if undefined).
    undefined : how many classes had an undefined precision / recall / F1.
    """

    classes: list
    precision: np.ndarray
    recall: np.ndarray
    f1: np.ndarray
    support: np.ndarray
    predicted: np.ndarray
    macro: dict = field(default_factory=dict)
    micro: dict = field(default_factory=dict)
    weighted: dict = field(default_factory=dict)
    undefined: dict = field(default_factory=dict)

    def to_dict(self, per_class: bool = False) -> dict:
        """JSON-ready summary (the per-class table only when ``per_class``)."""
        d = {"n_classes": len(self.classes), "macro": self.macro, "micro": self.micro,
             "weighted": self.weighted, "undefined": self.undefined,
             "undefined_reason": "precision is undefined for a class never predicted, recall "
                                 "for a class with no queries; averages skip undefined values"}
        if per_class:
            d["per_class"] = [{"label": str(c), "precision": _none(p), "recall": _none(r),
                               "f1": _none(f), "support": int(s)}
                              for c, p, r, f, s in zip(self.classes, self.precision, self.recall,
                                                       self.f1, self.support, strict=True)]
        return d


def classification_report(y_true: Sequence, y_pred: Sequence,
                          labels: Sequence | None = None) -> ClassificationReport:
    """Per-class precision, recall and F1 of rank-1 predictions, with averages.

    Parameters
    ----------
    y_true : true labels (any hashable; not None).
    y_pred : predicted labels; None means "no prediction" (rejected / no candidate).
    labels : classes to report on (default: every label seen in either list).
        Predictions outside ``labels`` count as misses, like scikit-learn's ``labels=``.

    Returns
    -------
    ClassificationReport

    Examples
    --------
    >>> r = classification_report([0, 1, 1], [0, 1, 0])
    >>> [round(float(x), 3) for x in r.f1]
    [0.667, 0.667]
    """
    classes, t, p = encode_labels(y_true, y_pred, labels)
    c = len(classes)
    hit = (t == p) & (t >= 0)
    tp = np.bincount(t[hit], minlength=c).astype(np.float64)
    support = np.bincount(t[t >= 0], minlength=c)
    predicted = np.bincount(p[p >= 0], minlength=c)
    fp = predicted - tp
    fn = support - tp
    precision = _ratio(tp, tp + fp)
    recall = _ratio(tp, tp + fn)
    f1 = _ratio(2 * tp, 2 * tp + fp + fn)
    stp, sfp, sfn = tp.sum(), fp.sum(), fn.sum()
    micro = {"precision": _none(_ratio(np.array([stp]), np.array([stp + sfp]))[0]),
             "recall": _none(_ratio(np.array([stp]), np.array([stp + sfn]))[0]),
             "f1": _none(_ratio(np.array([2 * stp]), np.array([2 * stp + sfp + sfn]))[0])}
    sup = support.astype(np.float64)
    return ClassificationReport(
        classes=classes, precision=precision, recall=recall, f1=f1, support=support,
        predicted=predicted,
        macro={"precision": _avg(precision), "recall": _avg(recall), "f1": _avg(f1)},
        micro=micro,
        weighted={"precision": _avg(precision, sup), "recall": _avg(recall, sup),
                  "f1": _avg(f1, sup)},
        undefined={"precision": int(np.isnan(precision).sum()),
                   "recall": int(np.isnan(recall).sum()), "f1": int(np.isnan(f1).sum())})


def accuracy_by_frequency(y_true: Sequence, y_pred: Sequence, frequency: Mapping,
                          edges: Sequence[int] = (1, 2, 5, 10, 20, 50, 100)) -> list[dict]:
    """Rank-1 accuracy of queries grouped by how frequent their class is (imbalance view).

    Parameters
    ----------
    y_true, y_pred : true and predicted labels (None = no prediction).
    frequency : label -> count (e.g. training or enrolled samples per class). A true
        label missing from it raises :class:`InvalidInputError`.
    edges : bucket lower bounds; bucket i holds counts in ``[edges[i], edges[i+1])``.

    Returns
    -------
    list of dicts ``{"bucket": "5-9", "classes": n, "queries": n, "accuracy": float | None}``;
    empty buckets have accuracy None (reason: no queries).

    Examples
    --------
    >>> b = accuracy_by_frequency(["a", "b"], ["a", "a"], {"a": 10, "b": 1}, edges=(1, 5))
    >>> [(x["bucket"], x["accuracy"]) for x in b]
    [('1-4', 0.0), ('5+', 1.0)]
    """
    if len(y_true) != len(y_pred):
        raise InvalidInputError(f"{len(y_true)} true labels but {len(y_pred)} predictions")
    if len(y_true) == 0:
        raise InvalidInputError("accuracy by frequency needs at least one query")
    missing = [t for t in set(y_true) if t not in frequency]
    if missing:
        raise InvalidInputError(f"{len(missing)} true labels have no frequency, e.g. {missing[0]!r}")
    edges = sorted(set(int(e) for e in edges))
    freq = np.array([frequency[t] for t in y_true], dtype=np.int64)
    ok = np.array([p is not None and p == t for t, p in zip(y_true, y_pred, strict=True)])
    bucket = np.searchsorted(edges, freq, side="right") - 1
    out = []
    for i, lo in enumerate(edges):
        name = f"{lo}+" if i == len(edges) - 1 else f"{lo}-{edges[i + 1] - 1}"
        sel = bucket == i
        n = int(sel.sum())
        cls = len({t for t, s in zip(y_true, sel, strict=True) if s})
        out.append({"bucket": name, "classes": cls, "queries": n,
                    "accuracy": float(ok[sel].mean()) if n else None})
    below = int((bucket < 0).sum())
    if below:
        low = {t for t, b in zip(y_true, bucket, strict=True) if b < 0}
        out.insert(0, {"bucket": f"<{edges[0]}", "classes": len(low), "queries": below,
                       "accuracy": float(ok[bucket < 0].mean())})
    return out
