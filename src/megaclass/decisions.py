"""What a recognition answers, and which threshold it answers with.

:class:`Decision` is the outcome of identifying one sample (1:N), :class:`Verdict` of verifying
one (1:1). A decision needs a threshold: the one a call gives, or none at all (``None``:
candidates only, no rejection), or — when the call gives nothing (:data:`UNSET`) — the
calibrated one; with none calibrated :func:`resolve_threshold` refuses
(NotCalibratedError), so that an uncalibrated gallery never silently accepts every probe.
:class:`~megaclass.recognizer.Recognizer` and :class:`~megaclass.fusion.FusedRecognizer`
share these.

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
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .errors import ConfigError, NotCalibratedError
from .gallery import Match

__all__ = ["UNSET", "Decision", "Verdict", "resolve_threshold"]


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
