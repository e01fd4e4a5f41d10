"""Backward-compatible training (Shen et al. 2020, "Towards Backward-Compatible Representation
Learning", BCT): train a new encoder whose embeddings can be searched against templates
the *old* encoder made, so a model upgrade does not have to re-embed the gallery at once.

BCT adds an *influence loss*: the new embeddings go through the old model's classifier,
frozen, with the same margin softmax as the new head. ``megaclass train`` saves the
encoder only, so the old classifier is built here from the old encoder itself: the
normalised mean old-model embedding of each training class (up to ``per_class`` samples
of it). That is also how the paper extends the old classifier to classes the old model
never trained on, and it works for any old model directory (even one trained before this
existed, or one whose head was never kept). It needs the old and new embedding to have
the same dimension and the old model to accept the training source's images.

Example
-------
>>> import torch, torch.nn.functional as F
>>> loss = InfluenceLoss(F.normalize(torch.randn(5, 8), dim=1))
>>> float(loss(F.normalize(torch.randn(4, 8), dim=1), torch.tensor([0, 1, 2, 3]))) > 0
True
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError


def old_class_centers(old_encoder, source, *, per_class: int = 8, chunk: int = 1024) -> torch.Tensor:
    """``(C, D)`` normalised mean embeddings of each class of ``source`` by ``old_encoder``
    (its first ``per_class`` items), rows in the source's label order."""
    labels = np.asarray(source.labels)
    order = np.argsort(labels, kind="stable")
    counts = np.bincount(labels, minlength=source.num_classes)
    if (counts == 0).any():
        missing = int(np.flatnonzero(counts == 0)[0])
        raise ConfigError(f"BCT: class {missing} of the training source has no samples to place it "
                          "in the old model's space")
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    take = np.concatenate([order[s: s + min(per_class, n)] for s, n in zip(starts, counts, strict=True)])
    sums = torch.zeros(source.num_classes, old_encoder.dim)
    for a in range(0, len(take), chunk):
        idx = take[a: a + chunk].tolist()
        items = source.__getitems__(idx) if hasattr(source, "__getitems__") else [source[i] for i in idx]
        x = torch.stack([img for img, _ in items])
        y = torch.tensor([lab for _, lab in items], dtype=torch.int64)
        if x.shape[1] != old_encoder.config.in_channels:
            raise ConfigError(f"BCT: the old model takes {old_encoder.config.in_channels}-channel images, "
                              f"the training source gives {x.shape[1]}")
        sums.index_add_(0, y, old_encoder.embed(x.float()))
    return F.normalize(sums, dim=1)


class InfluenceLoss(nn.Module):
    """Margin softmax of new embeddings against the frozen old classifier ``centres`` (C, D).

    ``scale`` and ``margin`` follow the new head (CosFace form ``s * (cos - m)`` at the
    target); ``weight`` multiplies the loss. ``last_`` is the last value (for the history).
    """

    centres: torch.Tensor  # buffer (C, D), rows L2-normalised

    def __init__(self, centres: torch.Tensor, *, scale: float = 30.0, margin: float = 0.35,
                 weight: float = 1.0) -> None:
        super().__init__()
        self.register_buffer("centres", F.normalize(centres.detach().float(), dim=1))
        self.scale, self.margin, self.weight = float(scale), float(margin), float(weight)
        self.last_ = float("nan")

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        cos = F.normalize(embeddings.float(), dim=1) @ self.centres.t()
        logits = self.scale * (cos - self.margin * F.one_hot(labels.long(), cos.shape[1]))
        loss = F.cross_entropy(logits, labels.long())
        self.last_ = float(loss.detach())
        return self.weight * loss


def influence_loss(old_model, source, head, *, dim: int) -> tuple[InfluenceLoss, str]:
    """The influence loss of a training run made compatible with ``old_model`` (a model
    directory): ``(loss, old model fingerprint)``. Scale and margin follow ``head``."""
    from ..models import load_encoder
    from ..models.encoder import Encoder

    old = load_encoder(old_model)
    if not isinstance(old, Encoder):
        raise ConfigError(f"BCT: {old_model} is not a trained megaclass encoder (an imported ONNX model "
                          "cannot embed the training images here)")
    if old.dim != dim:
        raise ConfigError(f"BCT needs the new embedding dimension to equal the old model's: old {old.dim}, "
                          f"new {dim} (pass --dim {old.dim})")
    old.eval()
    centres = old_class_centers(old, source)
    scale = getattr(head, "scale", 30.0)
    margin = getattr(head, "margin", 0.35)
    return InfluenceLoss(centres, scale=scale, margin=margin), old.fingerprint()
