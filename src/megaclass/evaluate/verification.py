"""Verification (1:1) metrics: FMR / FNMR, ROC, TAR at FAR, EER.

A *genuine* pair compares a sample with its own class; an *impostor* pair with another
class. At threshold T (accept when score >= T, ISO/IEC 19795-1 vocabulary):

- FMR(T) = FAR(T): share of impostor pairs accepted.
- FNMR(T) = 1 - TAR(T): share of genuine pairs rejected.

TAR at FAR f is measured at the lowest threshold whose FAR on these impostor pairs is
<= f. It needs at least ``ceil(1/f)`` impostor pairs: with fewer, FAR = f cannot be
observed and the value is reported as None with that reason (InsightFace reports IJB-C
TAR down to FAR = 1e-6 from ~10^8 impostor pairs for the same reason).

Example
-------
>>> tar_at_far([0.9, 0.8, 0.3], [0.1, 0.2, 0.5, 0.85], fars=(0.25, 1e-3))[0]["tar"]
0.666...
"""

from __future__ import annotations

import math

import numpy as np

from ..errors import InvalidInputError
from .open_set import _scores, calibrate_threshold

DEFAULT_FARS = (1e-1, 1e-2, 1e-3, 1e-4, 1e-5, 1e-6)


def fmr(impostor_scores, threshold: float) -> float:
    """False match rate (FAR): share of impostor scores >= ``threshold``."""
    return float(np.mean(_scores(impostor_scores, "impostor scores") >= threshold))


def fnmr(genuine_scores, threshold: float) -> float:
    """False non-match rate: share of genuine scores < ``threshold``."""
    return float(np.mean(_scores(genuine_scores, "genuine scores") < threshold))


def roc_curve(genuine_scores, impostor_scores) -> dict[str, np.ndarray]:
    """FAR and TAR at every distinct score used as threshold (highest first).

    Same points as ``sklearn.metrics.roc_curve(..., drop_intermediate=False)``: the first
    threshold is +inf (nothing accepted), then every distinct finite score descending.

    Returns
    -------
    dict with ``threshold``, ``far`` (= FMR) and ``tar`` (= 1 - FNMR) arrays.
    """
    g = np.sort(_scores(genuine_scores, "genuine scores"))
    i = np.sort(_scores(impostor_scores, "impostor scores"))
    t = np.unique(np.concatenate([g, i]))[::-1]
    t = t[np.isfinite(t)]
    far = (i.size - np.searchsorted(i, t, side="left")) / i.size
    tar = (g.size - np.searchsorted(g, t, side="left")) / g.size
    return {"threshold": np.concatenate([[np.inf], t]), "far": np.concatenate([[0.0], far]),
            "tar": np.concatenate([[0.0], tar])}


def auc(x, y) -> float:
    """Area under a curve by the trapezoid rule (``x`` increasing), e.g. ROC AUC."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    return float(np.sum(np.diff(x) * (y[1:] + y[:-1]) / 2))


def tar_at_far(genuine_scores, impostor_scores, fars=DEFAULT_FARS) -> list[dict]:
    """TAR at each FAR, with None and a reason where there are too few impostor pairs.

    Returns
    -------
    list of ``{"far", "tar", "threshold", "achieved_far", "reason"}`` dicts.
    """
    g = _scores(genuine_scores, "genuine scores")
    imp = _scores(impostor_scores, "impostor scores")
    out = []
    for f in fars:
        if not 0.0 < f < 1.0:
            raise InvalidInputError(f"FAR must lie in (0, 1), got {f}")
        need = int(math.ceil(1.0 / f - 1e-9))
        if imp.size < need:
            out.append({"far": f, "tar": None, "threshold": None, "achieved_far": None,
                        "reason": f"needs >= {need:,} impostor pairs, got {imp.size:,}"})
            continue
        cal = calibrate_threshold(imp, f)
        out.append({"far": f, "tar": float(np.mean(g >= cal.threshold)),
                    "threshold": cal.threshold, "achieved_far": cal.achieved_fpir,
                    "reason": None})
    return out


def eer(genuine_scores, impostor_scores) -> dict[str, float]:
    """Equal error rate: where FMR and FNMR cross (linear interpolation between thresholds).

    Examples
    --------
    >>> eer([0.9, 0.8, 0.4], [0.1, 0.5, 0.2])["eer"]
    0.333...
    """
    roc = roc_curve(genuine_scores, impostor_scores)
    far, frr, thr = roc["far"], 1.0 - roc["tar"], roc["threshold"]
    diff = frr - far  # falls from 1 (nothing accepted) to <= 0 (everything accepted)
    j = int(np.argmax(diff <= 0))
    if j == 0:
        return {"eer": float(far[0]), "threshold": float(thr[0])}
    d0, d1 = diff[j - 1], diff[j]
    w = d0 / (d0 - d1) if d0 != d1 else 0.0
    value = far[j - 1] + w * (far[j] - far[j - 1])
    t0 = thr[j - 1] if np.isfinite(thr[j - 1]) else thr[j]
    return {"eer": float(value), "threshold": float(t0 + w * (thr[j] - t0))}


def verification_report(genuine_scores, impostor_scores, fars=DEFAULT_FARS) -> dict:
    """TAR@FAR list, EER and ROC AUC as one JSON-ready dict."""
    roc = roc_curve(genuine_scores, impostor_scores)
    e = eer(genuine_scores, impostor_scores)
    return {"genuine_pairs": int(np.size(genuine_scores)),
            "impostor_pairs": int(np.size(impostor_scores)),
            "tar_at_far": tar_at_far(genuine_scores, impostor_scores, fars),
            "eer": e["eer"], "eer_threshold": e["threshold"],
            "roc_auc": auc(roc["far"], roc["tar"])}
