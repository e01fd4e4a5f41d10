"""Heads by name: the one place that maps ``"cosface"`` to a class."""

from __future__ import annotations

from ..errors import ConfigError
from .adaptive import AdaptiveHead
from .base import Head
from .hierarchical import HierarchicalHead
from .partial_fc import PartialFCHead
from .softmax import ArcFaceHead, CosFaceHead, MarginSoftmaxHead, SoftmaxHead
from .triplet import TripletHead

HEADS: dict[str, type[Head]] = {
    cls.name: cls for cls in (SoftmaxHead, MarginSoftmaxHead, CosFaceHead, ArcFaceHead, PartialFCHead,
                              AdaptiveHead, HierarchicalHead, TripletHead)
}


def make_head(name: str, num_classes: int, dim: int, **kwargs) -> Head:
    """Build a head by name (``softmax``, ``normface``, ``cosface``, ``arcface``, ``partial_fc``,
    ``adaptive``, ``hierarchical``, ``triplet``); ``kwargs`` go to its constructor.

    Example
    -------
    >>> make_head("partial_fc", 1000, 64, sample_rate=0.2).sample_rate
    0.2
    """
    try:
        cls = HEADS[name.lower()]
    except KeyError:
        raise ConfigError(f"unknown head {name!r}; choose one of {', '.join(sorted(HEADS))}") from None
    kwargs = {k: v for k, v in kwargs.items() if v is not None}
    try:
        return cls(num_classes, dim, **kwargs)
    except TypeError as exc:
        raise ConfigError(f"head {name!r} does not accept {sorted(kwargs)}: {exc}") from None
