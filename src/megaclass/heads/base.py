"""The :class:`Head` interface: a training objective over integer class ids.

A head turns a batch of embeddings and their labels into a scalar loss. Heads
that keep one weight row per class (softmax, CosFace, ArcFace, ...) can export
those rows, L2-normalised, as class centres: the same representation a gallery
stores, so a trained head can be enrolled straight into a gallery.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import ClassVar

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from ..errors import ConfigError, InvalidInputError, ModelFormatError


class Head(nn.Module):
    """Base class of training heads.

    Subclasses set ``name`` and implement :meth:`forward`; those holding class
    weights also implement :meth:`logits` and :meth:`class_centers`.
    """

    name: ClassVar[str] = "head"

    def __init__(self, num_classes: int, dim: int) -> None:
        super().__init__()
        if num_classes < 2:
            raise ConfigError(f"a head needs at least 2 classes, got {num_classes}")
        if dim < 1:
            raise ConfigError(f"embedding dim must be >= 1, got {dim}")
        self.num_classes = int(num_classes)
        self.dim = int(dim)

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Scalar loss for ``(B, dim)`` embeddings and ``(B,)`` int64 labels."""
        raise NotImplementedError

    def logits(self, embeddings: torch.Tensor) -> torch.Tensor:
        """``(B, num_classes)`` scores without margin (for closed-set prediction)."""
        raise NotImplementedError(f"{type(self).__name__} has no per-class logits")

    def class_centers(self) -> torch.Tensor | None:
        """``(num_classes, dim)`` L2-normalised class centres, or None if the head has none."""
        return None

    def hparams(self) -> dict:
        """Constructor arguments beyond ``num_classes`` and ``dim`` (for save/load)."""
        return {}

    # -- validation shared by every head ------------------------------------------
    def check_batch(self, embeddings: torch.Tensor, labels: torch.Tensor) -> None:
        if embeddings.ndim != 2 or embeddings.shape[1] != self.dim:
            raise InvalidInputError(
                f"{self.name} head expects embeddings of shape (B, {self.dim}), "
                f"got {tuple(embeddings.shape)}"
            )
        if embeddings.shape[0] == 0:
            raise InvalidInputError("empty batch: at least one embedding is needed")
        if labels.shape != (embeddings.shape[0],):
            raise InvalidInputError(
                f"labels must have shape ({embeddings.shape[0]},), got {tuple(labels.shape)}"
            )
        lo, hi = int(labels.min()), int(labels.max())
        if lo < 0 or hi >= self.num_classes:
            raise InvalidInputError(
                f"labels must lie in [0, {self.num_classes}), got values in [{lo}, {hi}]"
            )

    # -- persistence (safetensors + JSON, never pickle) ------------------------------
    def save(self, path: str | os.PathLike) -> Path:
        out = Path(path)
        out.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
        save_file(state, str(out / "head.safetensors"))
        cfg = {"kind": "megaclass.head", "name": self.name, "num_classes": self.num_classes,
               "dim": self.dim, "hparams": self.hparams()}
        (out / "head.json").write_text(json.dumps(cfg, indent=2))
        return out


def load_head(path: str | os.PathLike) -> Head:
    """Load a head written by :meth:`Head.save`."""
    from .registry import make_head

    root = Path(path)
    try:
        cfg = json.loads((root / "head.json").read_text())
        state = load_file(str(root / "head.safetensors"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ModelFormatError(f"{root} does not hold a saved head: {exc}") from exc
    if cfg.get("kind") != "megaclass.head":
        raise ModelFormatError(f"{root}/head.json does not describe a megaclass head")
    head = make_head(cfg["name"], cfg["num_classes"], cfg["dim"], **cfg.get("hparams", {}))
    head.load_state_dict(state)
    return head
