"""Metrics from score / rank streams in bounded memory.

1M queries × top-k candidates, or 10⁹ impostor pairs, do not fit as arrays on a small
machine. The accumulators here keep fixed-size histograms of scores (default 20,000 bins
over the cosine range [-1, 1], i.e. 1e-4 wide) and counts of true ranks, so memory does
not grow with the number of searches. Rates are exact at every bin edge; a threshold
is therefore known to within one bin width (compare with the exact array functions in
:mod:`.open_set` and :mod:`.verification`, which the tests do).

Example
-------
>>> acc = IdentificationStream(max_rank=5)
>>> acc.add_mated(ranks=[1, 2, 0], scores=[0.9, 0.7, 0.2])
>>> acc.add_non_mated([0.3, 0.1])
>>> acc.cmc()[:2].tolist()
[0.333..., 0.666...]
"""

from __future__ import annotations

import math

import numpy as np

from ..errors import InvalidInputError
from .open_set import _scores


class ScoreHistogram:
    """Counts of scores in fixed bins; ``count_at_least(t)`` is exact at bin edges.

    Scores below ``lo`` go to the first bin, above ``hi`` to the last; ``-inf`` (a search
    with no candidate) is counted apart and never passes a threshold.
    """

    def __init__(self, lo: float = -1.0, hi: float = 1.0, bins: int = 20_000):
        if not hi > lo or bins < 1:
            raise InvalidInputError(f"need hi > lo and bins >= 1, got {lo}, {hi}, {bins}")
        self.lo, self.hi, self.bins = float(lo), float(hi), int(bins)
        self.width = (self.hi - self.lo) / self.bins
        self.counts = np.zeros(self.bins, dtype=np.int64)
        self.none = 0

    @property
    def edges(self) -> np.ndarray:
        """Lower edge of every bin (the thresholds at which rates are exact)."""
        return self.lo + self.width * np.arange(self.bins)

    @property
    def n(self) -> int:
        return int(self.counts.sum()) + self.none

    def add(self, scores) -> None:
        s = np.asarray(scores, dtype=np.float64).reshape(-1)
        if s.size == 0:
            return
        s = _scores(s, "scores")
        finite = np.isfinite(s)
        self.none += int((~finite).sum())
        idx = np.floor((s[finite] - self.lo) / self.width).astype(np.int64)
        self.counts += np.bincount(np.clip(idx, 0, self.bins - 1), minlength=self.bins)

    def at_least(self) -> np.ndarray:
        """Number of scores >= each bin edge (array aligned with :attr:`edges`)."""
        return np.cumsum(self.counts[::-1])[::-1]


class IdentificationStream:
    """Open-set 1:N accumulator: CMC, rank-1 miss rate, FNIR at FPIR, DET points.

    ``add_mated(ranks, scores)``: per mated search, the 1-based rank of its class among the
    candidates (0 = absent) and the rank-1 score. ``add_non_mated(scores)``: rank-1 scores
    of non-mated searches (``-inf`` when there was no candidate).
    """

    def __init__(self, max_rank: int = 10, lo: float = -1.0, hi: float = 1.0, bins: int = 20_000):
        self.max_rank = int(max_rank)
        self.rank_counts = np.zeros(self.max_rank + 2, dtype=np.int64)  # 0 = miss, last = > max
        self.hits = ScoreHistogram(lo, hi, bins)       # rank-1 correct mated searches
        self.n_mated = 0
        self.non_mated = ScoreHistogram(lo, hi, bins)

    def add_mated(self, ranks, scores) -> None:
        r = np.asarray(ranks, dtype=np.int64).reshape(-1)
        s = _scores(scores, "mated scores") if r.size else np.zeros(0)
        if r.shape != s.shape:
            raise InvalidInputError(f"{r.size} ranks but {s.size} scores")
        if (r < 0).any():
            raise InvalidInputError("ranks must be >= 0 (0 = not among the candidates)")
        self.rank_counts += np.bincount(np.minimum(r, self.max_rank + 1), minlength=self.max_rank + 2)
        self.hits.add(s[r == 1])
        self.n_mated += int(r.size)

    def add_non_mated(self, scores) -> None:
        self.non_mated.add(scores)

    def cmc(self) -> np.ndarray:
        if self.n_mated == 0:
            raise InvalidInputError("no mated searches were added")
        return np.cumsum(self.rank_counts[1:self.max_rank + 1]) / self.n_mated

    def det(self) -> dict[str, np.ndarray]:
        """FPIR and FNIR at every bin edge."""
        if self.n_mated == 0 or self.non_mated.n == 0:
            raise InvalidInputError("DET needs mated and non-mated searches")
        return {"threshold": self.hits.edges,
                "fpir": self.non_mated.at_least() / self.non_mated.n,
                "fnir": 1.0 - self.hits.at_least() / self.n_mated}

    def fnir_at_fpir(self, target: float) -> dict:
        """FNIR at the lowest bin edge with FPIR <= target (None + reason if not measurable)."""
        n = self.non_mated.n
        need = int(math.ceil(1.0 / target - 1e-9))
        if n < need:
            why = "FPIR undefined: no non-mated searches" if n == 0 else \
                f"needs >= {need:,} non-mated searches, got {n:,}"
            return {"target_fpir": target, "fnir": None, "threshold": None, "reason": why}
        d = self.det()
        k = int(np.argmax(d["fpir"] <= target + 1e-12)) if (d["fpir"] <= target + 1e-12).any() \
            else len(d["fpir"]) - 1
        return {"target_fpir": target, "threshold": float(d["threshold"][k]),
                "fpir": float(d["fpir"][k]), "fnir": float(d["fnir"][k]), "reason": None}


class VerificationStream:
    """1:1 accumulator of genuine and impostor scores: TAR at FAR and EER in bounded memory."""

    def __init__(self, lo: float = -1.0, hi: float = 1.0, bins: int = 20_000):
        self.genuine = ScoreHistogram(lo, hi, bins)
        self.impostor = ScoreHistogram(lo, hi, bins)

    def add(self, genuine=(), impostor=()) -> None:
        self.genuine.add(genuine)
        self.impostor.add(impostor)

    def tar_at_far(self, far: float) -> dict:
        n = self.impostor.n
        need = int(math.ceil(1.0 / far - 1e-9))
        if n < need or self.genuine.n == 0:
            why = "no genuine pairs" if self.genuine.n == 0 else \
                f"needs >= {need:,} impostor pairs, got {n:,}"
            return {"far": far, "tar": None, "threshold": None, "reason": why}
        fars = self.impostor.at_least() / n
        k = int(np.argmax(fars <= far + 1e-12)) if (fars <= far + 1e-12).any() else len(fars) - 1
        return {"far": far, "tar": float(self.genuine.at_least()[k] / self.genuine.n),
                "threshold": float(self.impostor.edges[k]), "achieved_far": float(fars[k]),
                "reason": None}

    def eer(self) -> float:
        if self.genuine.n == 0 or self.impostor.n == 0:
            raise InvalidInputError("EER needs genuine and impostor pairs")
        far = self.impostor.at_least() / self.impostor.n
        frr = 1.0 - self.genuine.at_least() / self.genuine.n
        k = int(np.argmin(np.abs(far - frr)))
        return float((far[k] + frr[k]) / 2)
