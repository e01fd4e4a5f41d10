"""What a recognition answers, and which threshold it answers with.

:class:`Decision` is the outcome of identifying one sample (1:N), :class:`Verdict` of verifying
one (1:1). A decision needs a threshold: the one a call gives, or none at all (``None``:
candidates only, no rejection), or — when the call gives nothing (:data:`UNSET`) — the
calibrated one; with none calibrated :func:`resolve_threshold` refuses
(NotCalibratedError), so that an uncalibrated gallery never silently accepts every probe.
:class:`~megaclass.recognizer.Recognizer` and :class:`~megaclass.fusion.FusedRecognizer`
share these.

:class:`DecisionRule` says *what* is compared with the threshold. ``score``: the best class's
cosine score. ``cohort[:N]``: the best score minus the mean score of the next N
classes of the same search (default N = 20), a per-probe normalisation in the spirit of
T-norm (Auckenthaler et al. 2000) with the probe's nearest gallery classes as the cohort: a
non-mated probe's best class hardly stands out from its runners-up, a mated probe's does,
which a raw score cannot see as the gallery grows. The rule is stored with the calibration
(the threshold is meaningless without it). A calibration given no rule picks one by the
gallery's size (:meth:`DecisionRule.auto`: cohort from :data:`AUTO_COHORT_AT` classes on); an
uncalibrated recognizer, whose threshold the caller gives, decides on the score. README,
"Deciding known from unknown", has the measurements.

Example
-------
>>> resolve_threshold(0.4, calibrated=None, where="g/")
0.4
>>> resolve_threshold(UNSET, calibrated=0.31, where="g/")
0.31
>>> resolve_threshold(None, calibrated=0.31, where="g/") is None
True
>>> Decision(None, 0.12).known
False
>>> rule = DecisionRule.parse("cohort:3")
>>> rule.spec, rule.candidates
('cohort:3', 4)
>>> round(rule.statistic([0.9, 0.5, 0.4, 0.3, 0.1]), 6)  # 0.9 - mean(0.5, 0.4, 0.3)
0.5
>>> DecisionRule.parse("score").statistic([0.9, 0.5])
0.9
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .errors import ConfigError, NotCalibratedError
from .gallery import Match

__all__ = ["AUTO_COHORT_AT", "UNSET", "Decision", "DecisionRule", "Verdict", "resolve_threshold",
           "score_matrix"]

#: cohort size of ``cohort`` without ``:N``
DEFAULT_COHORT = 20

#: a calibration that is given no rule picks ``cohort`` for galleries of at least this many
#: classes, ``score`` below. Measured with the reference model (FNIR at FPIR 1 %, score vs
#: cohort:20): 8.7 vs 8.8 % at 1k classes, 15.8 vs 14.6 % at 2k, 29.3 vs 21.4 % at 5k,
#: 94.0 vs 60.3 % at 1M; below 1k nothing was measured, so the plain score stays.
AUTO_COHORT_AT = 1000


class _Unset:
    def __repr__(self) -> str:
        return "UNSET"


#: the default ``threshold`` of identify / verify: "not given", as opposed to an explicit
#: None (candidates only, no rejection)
UNSET = _Unset()


@dataclass(frozen=True)
class Decision:
    """Outcome of identifying one sample.

    ``label`` is the best class, or None when its score is below the threshold
    (the sample is *unknown*); ``candidates`` are the best k classes regardless.
    """

    label: str | None
    score: float
    candidates: list[Match] = field(default_factory=list)
    #: the value compared with the threshold when the rule is not ``score`` (else None)
    statistic: float | None = None

    @property
    def known(self) -> bool:
        return self.label is not None


@dataclass(frozen=True)
class Verdict:
    """Outcome of verifying one sample against a claimed label (1:1)."""

    label: str
    accepted: bool
    score: float
    threshold: float | None
    #: the value compared with the threshold when the rule is not ``score`` (else None)
    statistic: float | None = None


@dataclass(frozen=True)
class DecisionRule:
    """What a decision compares with the threshold: ``score`` or ``cohort:N`` (module doc)."""

    cohort: int = 0  # 0: the best score itself

    @classmethod
    def parse(cls, spec: str | DecisionRule | None) -> DecisionRule:
        """``"score"``, ``"cohort"`` or ``"cohort:N"`` (1 <= N <= 1000); None is ``score``."""
        if isinstance(spec, DecisionRule):
            return spec
        if spec is None or spec == "score":
            return cls(0)
        if not isinstance(spec, str):
            raise ConfigError(f"decision rule must be 'score' or 'cohort[:N]', got {spec!r}")
        name, _, n = spec.strip().partition(":")
        if name != "cohort" or (n and not n.isdigit()) or not 1 <= int(n or DEFAULT_COHORT) <= 1000:
            raise ConfigError(f"decision rule must be 'score' or 'cohort[:N]' with 1 <= N <= 1000, "
                              f"got {spec!r}")
        return cls(int(n or DEFAULT_COHORT))

    @classmethod
    def auto(cls, classes: int) -> DecisionRule:
        """The rule a calibration picks when given none, for a gallery of ``classes`` classes:
        ``cohort:20`` from :data:`AUTO_COHORT_AT` classes on, else ``score``.

        >>> DecisionRule.auto(999).spec, DecisionRule.auto(5000).spec
        ('score', 'cohort:20')
        """
        return cls(DEFAULT_COHORT if classes >= AUTO_COHORT_AT else 0)

    @property
    def spec(self) -> str:
        return f"cohort:{self.cohort}" if self.cohort else "score"

    @property
    def candidates(self) -> int:
        """How many classes a search must return for the statistic (best + cohort)."""
        return 1 + self.cohort

    def statistic(self, scores) -> float:
        """The decision value of one search's class scores, best first. With fewer than N
        runners-up (a small or filtered gallery) the cohort is the ones there are; with none,
        the best score itself."""
        return float(self.statistics(np.asarray([scores[:self.candidates]], dtype=np.float64))[0])

    def statistics_of(self, found) -> np.ndarray:
        """:meth:`statistics` of gallery search results (lists of matches, best first)."""
        return self.statistics(score_matrix(found, self.candidates))

    def statistics(self, scores: np.ndarray) -> np.ndarray:
        """:meth:`statistic` of each row of an ``(n, >= candidates)`` score matrix, best first,
        ``-inf`` where a search returned fewer classes."""
        scores = np.asarray(scores, dtype=np.float64)
        best = scores[:, 0].copy()
        if not self.cohort or scores.shape[1] < 2:
            return best
        rest = scores[:, 1:1 + self.cohort]
        ok = np.isfinite(rest)
        n = ok.sum(1)
        mean = np.where(ok, rest, 0.0).sum(1) / np.maximum(n, 1)
        return np.where((n > 0) & np.isfinite(best), best - mean, best)


def resolve_threshold(threshold: float | None | _Unset, *, calibrated: float | None,
                      where: object) -> float | None:
    """The threshold a decision uses: ``threshold`` when given (None: candidates only, no
    rejection), else ``calibrated``; NotCalibratedError naming gallery ``where`` when there is
    none. A given threshold must be a finite number (ConfigError)."""
    if not isinstance(threshold, _Unset):
        if threshold is None:
            return None
        if isinstance(threshold, bool) or not isinstance(threshold, int | float) \
                or not np.isfinite(threshold):
            raise ConfigError(f"threshold must be a finite number or None, got {threshold!r}")
        return float(threshold)
    if calibrated is None:
        raise NotCalibratedError(
            f"gallery {where} has no calibrated threshold, so identify/verify "
            "cannot tell known from unknown: run `megaclass calibrate` (Recognizer.calibrate) "
            "on non-mated samples, give a threshold, or ask for candidates only "
            "(threshold=None)")
    return calibrated


def score_matrix(found, depth: int) -> np.ndarray:
    """Class scores of each search's matches, best first, padded with -inf to ``depth`` columns."""
    out = np.full((len(found), depth), -np.inf)
    for i, m in enumerate(found):
        out[i, :min(len(m), depth)] = [c.score for c in m[:depth]]
    return out
