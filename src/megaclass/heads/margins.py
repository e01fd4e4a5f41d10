"""Margins: callables that modify the cosine of each sample's own class.

A margin softmax scores ``s * cos(theta_j)`` for every class ``j`` but replaces the target
class's cosine by ``margin(cos(theta_y))``, which is lower, so the encoder must pull each
embedding closer to its class centre than a plain softmax would. The margin is a part
given to a head -- :class:`~.softmax.MarginSoftmaxHead` (dense) and
:class:`~.partial_fc.PartialFCHead` (sampled, sharded) take the same objects, as
InsightFace's ``PartialFC_V2(margin_loss, ...)`` does -- so one sampled head serves every
margin, and ``sample_rate=1`` equals the dense head with that margin
(``tests/test_heads_partial_fc.py``).

- :class:`NoMargin` (``"normface"``): the identity (NormFace, Wang et al. 2017);
- :class:`CosFaceMargin` (``"cosface"``): ``cos(theta) - m`` (Wang et al. 2018);
- :class:`ArcFaceMargin` (``"arcface"``): ``cos(theta + m)`` (Deng et al. 2019).

A new margin subclasses :class:`Margin` with a ``name`` and ``__call__``; it must be
differentiable (Partial FC's fused loss takes its derivative with autograd). Heads save
the margin as ``margin_type`` (its name) and ``margin`` (``m``), so only margins listed in
:data:`MARGINS` can be loaded back from a head file.

Example
-------
>>> import torch
>>> CosFaceMargin(0.35)(torch.tensor([0.8]))
tensor([0.4500])
>>> make_margin("arcface").m
0.5
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch

from ..errors import ConfigError


class Margin:
    """Base class: ``margin(cos_target) -> modified cos_target`` with margin ``m``."""

    name: ClassVar[str] = "margin"
    default_m: ClassVar[float] = 0.0

    def __init__(self, m: float | None = None) -> None:
        m = self.default_m if m is None else m
        if isinstance(m, bool) or not isinstance(m, int | float) or not math.isfinite(m):
            raise ConfigError(f"the {self.name} margin must be a finite number, got {m!r}")
        self.m = float(m)

    def __call__(self, cos_target: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}(m={self.m})"


class NoMargin(Margin):
    """NormFace: no margin, the target cosine is left as it is (``m`` is ignored)."""

    name = "normface"

    def __call__(self, cos_target: torch.Tensor) -> torch.Tensor:
        return cos_target


class CosFaceMargin(Margin):
    """CosFace / large-margin cosine loss: ``cos(theta) - m``."""

    name = "cosface"
    default_m = 0.35

    def __call__(self, cos_target: torch.Tensor) -> torch.Tensor:
        return cos_target - self.m


class ArcFaceMargin(Margin):
    """ArcFace / additive angular margin: ``cos(theta + m)``.

    Where ``theta + m`` would pass pi the value continues linearly (``cos(theta) - m sin(m)``),
    keeping it monotonic in theta, as in the paper's reference implementation.
    """

    name = "arcface"
    default_m = 0.5

    def __call__(self, cos_target: torch.Tensor) -> torch.Tensor:
        m = self.m
        cos_c = cos_target.clamp(-1 + 1e-7, 1 - 1e-7)
        sin = torch.sqrt(1.0 - cos_c * cos_c)
        phi = cos_c * math.cos(m) - sin * math.sin(m)
        return torch.where(cos_c > math.cos(math.pi - m), phi, cos_c - m * math.sin(m))


#: Margins by name: what a head file's ``margin_type`` may say.
MARGINS: dict[str, type[Margin]] = {cls.name: cls for cls in (NoMargin, CosFaceMargin, ArcFaceMargin)}


def make_margin(name: str, m: float | None = None) -> Margin:
    """The margin called ``name`` (``normface``, ``cosface``, ``arcface``) with ``m`` (default: its own)."""
    try:
        cls = MARGINS[name]
    except (KeyError, TypeError):
        raise ConfigError(f"margin_type must be one of {sorted(MARGINS)}, got {name!r}") from None
    return cls(m)


def resolve_margin(margin: float | Margin | None, margin_type: str | None, default_type: str) -> Margin:
    """A head's margin from its arguments: a :class:`Margin`, or ``m`` and a margin name."""
    if isinstance(margin, Margin):
        if margin_type is not None and margin_type != margin.name:
            raise ConfigError(f"margin_type={margin_type!r} contradicts the margin given ({margin!r})")
        return margin
    return make_margin(default_type if margin_type is None else margin_type, margin)
