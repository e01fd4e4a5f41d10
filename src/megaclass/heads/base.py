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
from safetensors.torch import save_file
from torch import nn

from ..errors import ConfigError, InvalidInputError, MegaclassError, ModelFormatError
from ..tensorio import read_json, read_tensors
from .losses import classification_loss


class TaxonomyError(InvalidInputError):
    """A taxonomy (class -> group) file that is unreadable, names unknown classes or misses some."""


class InsufficientMemoryError(MegaclassError, MemoryError):
    """A head whose state (class centres + optimizer state) would not fit in available RAM."""


class Head(nn.Module):
    """Base class of training heads.

    Subclasses set ``name`` and implement :meth:`forward`; those holding class
    weights also implement :meth:`logits` and :meth:`class_centers`.
    """

    name: ClassVar[str] = "head"
    #: True for heads that update their own (row-sparse) state in :meth:`sparse_step`
    #: instead of exposing it as ``nn.Parameter`` to the trainer's optimizer.
    sparse: ClassVar[bool] = False
    #: True for heads whose loss is a cross-entropy over logits (focal / class weights apply).
    softmax_type: ClassVar[bool] = False

    def __init__(self, num_classes: int, dim: int) -> None:
        super().__init__()
        if num_classes < 2:
            raise ConfigError(f"a head needs at least 2 classes, got {num_classes}")
        if dim < 1:
            raise ConfigError(f"embedding dim must be >= 1, got {dim}")
        self.num_classes = int(num_classes)
        self.dim = int(dim)
        self.focal_gamma = 0.0
        self.class_weight: torch.Tensor | None = None

    # -- loss options (training-time only, not saved) ---------------------------------
    def set_loss(self, *, focal_gamma: float = 0.0, class_weight: torch.Tensor | None = None) -> Head:
        """Use focal loss (``focal_gamma > 0``) and/or per-class weights in the cross-entropy.

        Only softmax-type heads accept these (``softmax``, ``normface``, ``cosface``,
        ``arcface``, ``partial_fc``, ``hierarchical``). ``class_weight`` has one entry per
        class, e.g. :func:`megaclass.data.samplers.class_weights` (Cui et al. 2019).
        """
        if focal_gamma < 0:
            raise ConfigError(f"focal_gamma must be >= 0, got {focal_gamma}")
        if (focal_gamma or class_weight is not None) and not self.softmax_type:
            raise ConfigError(f"the {self.name} head has no softmax loss: focal loss and class "
                              "weights do not apply to it")
        if class_weight is not None:
            class_weight = torch.as_tensor(class_weight, dtype=torch.float32).flatten()
            if class_weight.numel() != self.num_classes:
                raise ConfigError(f"class_weight needs {self.num_classes} entries, "
                                  f"got {class_weight.numel()}")
        self.focal_gamma = float(focal_gamma)
        self.class_weight = class_weight
        return self

    def loss_from_logits(self, logits: torch.Tensor, targets: torch.Tensor,
                         labels: torch.Tensor | None = None) -> torch.Tensor:
        """Cross-entropy of ``logits`` at column ``targets`` with the head's focal/weight options.

        ``labels`` (global class ids, default ``targets``) select the class weights when the
        logit columns are a subset of classes (Partial FC, hierarchical).
        """
        weight = None
        if self.class_weight is not None:
            weight = self.class_weight.to(logits.device)[targets if labels is None else labels]
        return classification_loss(logits, targets, gamma=self.focal_gamma, sample_weight=weight)

    def sparse_step(self, lr: float) -> None:
        """Apply the head's own update after ``loss.backward()`` (sparse heads only)."""

    def predict(self, embeddings: torch.Tensor, k: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
        """Top-``k`` ``(scores, class ids)`` per embedding, each ``(B, k)``.

        The default ranks :meth:`logits`; heads with another inference rule (beam
        search, nearest prototype) override it. At millions of classes export
        :meth:`class_centers` into a gallery and search it instead.
        """
        with torch.no_grad():
            scores = self.logits(embeddings)
            k = min(k, scores.shape[1])
            return scores.topk(k, dim=1)

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
        if not torch.isfinite(embeddings).all():
            raise InvalidInputError("embeddings contain NaN or inf")
        if labels.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8):
            raise InvalidInputError(f"labels must be integer class ids, got dtype {labels.dtype}")
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
        """Write ``head.json`` (name, sizes, hyper-parameters) and ``head.safetensors``."""
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
    cfg = read_json(root / "head.json")
    state = read_tensors(root / "head.safetensors")
    if cfg.get("kind") != "megaclass.head":
        raise ModelFormatError(f"{root}/head.json does not describe a megaclass head")
    head = make_head(cfg["name"], cfg["num_classes"], cfg["dim"], **cfg.get("hparams", {}))
    head.load_state_dict(state)
    return head
