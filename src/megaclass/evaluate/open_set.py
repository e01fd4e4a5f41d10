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
    a = np.asarray(x, dtype=np.float64).reshape(-1)
    if a.size == 0:
        raise InvalidInputError(f"{name}: at least one score is needed")
    if not np.all(np.isfinite(a)):
        raise InvalidInputError(f"{name} contain NaN or inf")
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
    if allowed >= n:
        threshold = float(s[-1])
    else:
        # strictly above the (allowed+1)-th highest score: exactly `allowed` (or fewer, on ties) pass
        threshold = float(np.nextafter(s[allowed], np.inf))
    false_pos = int(np.sum(s >= threshold))
    return Calibration(threshold=threshold, target_fpir=float(target_fpir),
                       achieved_fpir=false_pos / n, n_non_mated=n,
                       fpir_ci95=wilson_interval(false_pos, n))


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
    nm = np.sort(_scores(non_mated_scores, "non-mated scores"))
    thresholds = np.unique(np.concatenate([m, nm]))
    fp = 1.0 - np.searchsorted(nm, thresholds, side="left") / nm.size
    hits = np.sort(m[ok])
    fn = 1.0 - (hits.size - np.searchsorted(hits, thresholds, side="left")) / m.size
    return {"threshold": thresholds, "fpir": fp, "fnir": fn}
