"""Heads by name: the one place that maps ``"cosface"`` to a class, and loads saved heads."""

from __future__ import annotations

import inspect
import os
from pathlib import Path

from ..errors import ConfigError, ModelFormatError
from ..tensorio import read_json, read_tensors
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
    if "reduction" in kwargs and "reduction" not in inspect.signature(cls).parameters:
        raise ConfigError(f"the {cls.name} head has no softmax loss: focal loss and class weights "
                          "(a loss reduction) do not apply to it")
    try:
        return cls(num_classes, dim, **kwargs)
    except TypeError as exc:
        raise ConfigError(f"head {name!r} does not accept {sorted(kwargs)}: {exc}") from None


def load_head(path: str | os.PathLike) -> Head:
    """Load a head written by :meth:`Head.save` (``head.json`` + ``head.safetensors``)."""
    root = Path(path)
    cfg = read_json(root / "head.json")
    state = read_tensors(root / "head.safetensors")
    if cfg.get("kind") != "megaclass.head":
        raise ModelFormatError(f"{root}/head.json does not describe a megaclass head")
    head = make_head(cfg["name"], cfg["num_classes"], cfg["dim"], **cfg.get("hparams", {}))
    head.load_state_dict(state)
    return head
