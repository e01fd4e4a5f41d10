"""Open-set identification (1:N) metrics in the NIST FRVT/FRTE sense.

A *mated* search has its true class enrolled; a *non-mated* search does not.
At threshold T (see NIST IR 8271, Grother et al.):

- FPIR(T): fraction of non-mated searches whose best candidate scores >= T.
- FNIR(T): fraction of mated searches where the true class is not returned at
  rank 1 with score >= T (a wrong rank-1 answer counts as a miss).

:func:`calibrate_threshold` picks the lowest threshold whose FPIR on the given
non-mated scores does not exceed the target; its Wilson interval says how
precisely the number of non-mated searches pins that FPIR down.

Example
-------
>>> import numpy as np
>>> cal = calibrate_threshold(np.linspace(0, 1, 1000), target_fpir=0.01)
>>> round(cal.achieved_fpir, 3)
0.01
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

from ..errors import InvalidInputError

#: The default target FPIR of calibration everywhere (``Recognizer.calibrate``, ``megaclass
#: calibrate``, ``POST /calibrate``, the demo and ``evaluate``): 1 % of non-mated searches
#: accepted, the operating point of the README's numbers. Calibrating for it needs at least
#: ``min_non_mated(0.01)`` = 1,000 non-mated searches.
DEFAULT_TARGET_FPIR = 0.01


@dataclass(frozen=True)
class Calibration:
    """A threshold chosen for a target FPIR from ``n_non_mated`` non-mated searches."""

    threshold: float
    target_fpir: float
    achieved_fpir: float
    n_non_mated: int
    fpir_ci95: tuple[float, float]

    def to_dict(self) -> dict:
        d = asdict(self)
        d["fpir_ci95"] = list(self.fpir_ci95)
        return d


def _scores(x, name: str) -> np.ndarray:
    """Scores as float64; ``-inf`` marks a search with no candidate (it never passes a threshold)."""
    a = np.asarray(x, dtype=np.float64).reshape(-1)
    if a.size == 0:
        raise InvalidInputError(f"{name}: at least one score is needed")
    if np.isnan(a).any() or np.isposinf(a).any():
        raise InvalidInputError(f"{name} contain NaN or +inf ({int(np.isnan(a).sum())} NaN)")
    return a


def wilson_interval(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion (95 % by default)."""
    if n <= 0:
        return (0.0, 1.0)
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


def fpir(non_mated_scores, threshold: float) -> float:
    """False-positive identification rate of non-mated top scores at ``threshold``."""
    s = _scores(non_mated_scores, "non-mated scores")
    return float(np.mean(s >= threshold))


def fnir(mated_scores, mated_correct, threshold: float) -> float:
    """False-negative identification rate: true class not at rank 1 with score >= T."""
    s = _scores(mated_scores, "mated scores")
    ok = np.asarray(mated_correct, dtype=bool).reshape(-1)
    if ok.shape != s.shape:
        raise InvalidInputError("mated_correct must have one flag per mated score")
    return float(np.mean(~(ok & (s >= threshold))))


def calibrate_threshold(non_mated_scores, target_fpir: float) -> Calibration:
    """Lowest threshold with FPIR <= ``target_fpir`` on these non-mated top-1 scores."""
    if not 0.0 < target_fpir < 1.0:
        raise InvalidInputError(f"target FPIR must lie in (0, 1), got {target_fpir}")
    s = np.sort(_scores(non_mated_scores, "non-mated scores"))[::-1]
    n = s.size
    allowed = int(math.floor(target_fpir * n + 1e-9))
    if allowed >= n or not np.isfinite(s[allowed]):
        threshold = float(s[-1]) if np.isfinite(s[-1]) else float(s[np.isfinite(s)].min(initial=-1.0))
    else:
        # strictly above the (allowed+1)-th highest score: exactly `allowed` (or fewer, on ties) pass
        threshold = float(np.nextafter(s[allowed], np.inf))
    false_pos = int(np.sum(s >= threshold))
    return Calibration(threshold=threshold, target_fpir=float(target_fpir),
                       achieved_fpir=false_pos / n, n_non_mated=n,
                       fpir_ci95=wilson_interval(false_pos, n))


#: a calibration should let about this many non-mated searches pass, so it needs
#: ``MIN_FALSE_POSITIVES / target_fpir`` searches: with fewer, the threshold rests on the
#: one or two highest scores and the achieved FPIR's confidence interval spans several
#: times the target (2 false positives in 200 searches: 95 % CI 0.3 %-3.6 % for 1 %)
MIN_FALSE_POSITIVES = 10


def min_non_mated(target_fpir: float) -> int:
    """Non-mated searches a calibration for ``target_fpir`` needs (``10 / target_fpir``)."""
    return math.ceil(MIN_FALSE_POSITIVES / target_fpir - 1e-9)


def too_few_non_mated(cal: Calibration) -> str | None:
    """Why ``cal`` rests on too few non-mated searches (with its confidence interval), or None."""
    need = min_non_mated(cal.target_fpir)
    if cal.n_non_mated >= need:
        return None
    lo, hi = cal.fpir_ci95
    return (f"calibrating for FPIR {cal.target_fpir:g} needs at least {need:,} non-mated searches "
            f"(~{MIN_FALSE_POSITIVES}/FPIR), got {cal.n_non_mated:,}: the FPIR achieved on them, "
            f"{cal.achieved_fpir:.4f}, has a 95% confidence interval of {lo:.4f}-{hi:.4f}. Give "
            f"{need - cal.n_non_mated:,} more non-mated samples or a higher target FPIR")


def fnir_at_fpir(mated_scores, mated_correct, non_mated_scores,
                 target_fpir: float) -> dict[str, float]:
    """FNIR at the threshold calibrated on the same non-mated scores for ``target_fpir``."""
    cal = calibrate_threshold(non_mated_scores, target_fpir)
    return {"target_fpir": target_fpir, "threshold": cal.threshold,
            "fpir": cal.achieved_fpir,
            "fnir": fnir(mated_scores, mated_correct, cal.threshold)}


def det_curve(mated_scores, mated_correct, non_mated_scores) -> dict[str, np.ndarray]:
    """FPIR and FNIR at every distinct threshold (for DET plots)."""
    m = _scores(mated_scores, "mated scores")
    ok = np.asarray(mated_correct, dtype=bool).reshape(-1)
    if ok.shape != m.shape:
        raise InvalidInputError("mated_correct must have one flag per mated score")
    nm = np.sort(_scores(non_mated_scores, "non-mated scores"))
    thresholds = np.unique(np.concatenate([m, nm]))
    thresholds = thresholds[np.isfinite(thresholds)]
    fp = 1.0 - np.searchsorted(nm, thresholds, side="left") / nm.size
    hits = np.sort(m[ok])
    fn = 1.0 - (hits.size - np.searchsorted(hits, thresholds, side="left")) / m.size
    return {"threshold": thresholds, "fpir": fp, "fnir": fn}


def fnir_at_fpirs(mated_scores, mated_correct, non_mated_scores,
                  targets=(0.1, 0.01, 0.003, 0.001)) -> list[dict]:
    """FNIR at each target FPIR, or None with a reason when it cannot be measured.

    A target FPIR below ``1 / n_non_mated`` cannot be told apart from 0 with this many
    non-mated searches: its FNIR is reported as None (``reason`` says how many searches
    it needs) rather than a number that only looks precise. With no non-mated searches
    at all every entry is None ("FPIR undefined").

    Examples
    --------
    >>> r = fnir_at_fpirs([0.9, 0.4], [True, True], [0.1, 0.5], targets=(0.5, 0.01))
    >>> r[0]["fnir"], r[1]["fnir"], r[1]["reason"]
    (0.0, None, 'needs >= 100 non-mated searches, got 2')
    """
    m = _scores(mated_scores, "mated scores")
    ok = np.asarray(mated_correct, dtype=bool).reshape(-1)
    if ok.shape != m.shape:
        raise InvalidInputError("mated_correct must have one flag per mated score")
    nm = np.asarray(non_mated_scores, dtype=np.float64).reshape(-1)
    out = []
    for t in targets:
        if not 0.0 < t < 1.0:
            raise InvalidInputError(f"target FPIR must lie in (0, 1), got {t}")
        need = int(math.ceil(1.0 / t - 1e-9))
        if nm.size == 0:
            out.append({"target_fpir": t, "fnir": None, "threshold": None, "fpir": None,
                        "reason": "FPIR undefined: no non-mated searches"})
        elif nm.size < need:
            out.append({"target_fpir": t, "fnir": None, "threshold": None, "fpir": None,
                        "reason": f"needs >= {need:,} non-mated searches, got {nm.size:,}"})
        else:
            cal = calibrate_threshold(nm, t)
            out.append({"target_fpir": t, "threshold": cal.threshold, "fpir": cal.achieved_fpir,
                        "fpir_ci95": list(cal.fpir_ci95),
                        "fnir": fnir(m, ok, cal.threshold), "reason": None})
    return out


def cmc_curve(ranks, max_rank: int = 10) -> np.ndarray:
    """Cumulative match characteristic: share of mated searches with their class at rank <= k.

    ``ranks`` are 1-based true ranks, 0 where the class was not among the candidates
    (see :func:`~megaclass.evaluate.true_ranks`). Returns an array of ``max_rank`` rates
    for k = 1..max_rank.

    Examples
    --------
    >>> cmc_curve([1, 2, 0, 1], max_rank=3).tolist()
    [0.5, 0.75, 0.75]
    """
    r = np.asarray(ranks, dtype=np.int64).reshape(-1)
    if r.size == 0:
        raise InvalidInputError("CMC needs at least one mated search")
    if (r < 0).any():
        raise InvalidInputError("ranks must be >= 0 (0 = not found)")
    if max_rank < 1:
        raise InvalidInputError(f"max_rank must be >= 1, got {max_rank}")
    counts = np.bincount(np.minimum(r, max_rank + 1), minlength=max_rank + 2)
    return np.cumsum(counts[1:max_rank + 1]) / r.size


def rank1_miss_rate(ranks) -> float:
    """Share of mated searches whose class is not at rank 1 (FNIR at threshold -inf)."""
    return float(1.0 - cmc_curve(ranks, 1)[0])
