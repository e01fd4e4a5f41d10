"""Heads by name: the one place that maps ``"cosface"`` to a class."""

from __future__ import annotations

from ..errors import ConfigError
from .base import Head
from .softmax import ArcFaceHead, CosFaceHead, MarginSoftmaxHead, SoftmaxHead

HEADS: dict[str, type[Head]] = {
    cls.name: cls for cls in (SoftmaxHead, MarginSoftmaxHead, CosFaceHead, ArcFaceHead)
}


def make_head(name: str, num_classes: int, dim: int, **kwargs) -> Head:
    """Build a head by name (``softmax``, ``normface``, ``cosface``, ``arcface``)."""
    try:
        cls = HEADS[name.lower()]
    except KeyError:
        raise ConfigError(f"unknown head {name!r}; choose one of {', '.join(sorted(HEADS))}") from None
    kwargs = {k: v for k, v in kwargs.items() if v is not None}
    try:
        return cls(num_classes, dim, **kwargs)
    except TypeError as exc:
        raise ConfigError(f"head {name!r} does not accept {sorted(kwargs)}: {exc}") from None
