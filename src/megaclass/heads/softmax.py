"""Dense softmax heads: plain softmax and the cosine-margin family (CosFace, ArcFace).

CosFace (Wang et al. 2018, "CosFace: Large Margin Cosine Loss") subtracts a
margin from the target cosine; ArcFace (Deng et al. 2019, "ArcFace: Additive
Angular Margin Loss") adds it to the target angle. Both are a one-method
override of :class:`MarginSoftmaxHead`, which scales cosines by ``s`` and applies
cross-entropy. Their weight rows, normalised, are the class centres.

Example
-------
>>> import torch, torch.nn.functional as F
>>> head = CosFaceHead(num_classes=10, dim=8)
>>> loss = head(F.normalize(torch.randn(4, 8), dim=1), torch.tensor([0, 1, 2, 3]))
>>> loss.ndim
0
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .base import Head
from .scale import Scale


class SoftmaxHead(Head):
    """Plain linear softmax with bias over the (normalised) embeddings: the baseline.

    The embeddings are multiplied by ``scale`` first (fixed, or learned with
    ``learn_scale=True``): on unit vectors a linear softmax without it learns very
    slowly (NormFace's observation; measured in ``megaclass bench heads``).
    """

    name = "softmax"
    softmax_type = True
    default_scale = 16.0

    def __init__(self, num_classes: int, dim: int, *, scale: float | None = None,
                 learn_scale: bool = False) -> None:
        super().__init__(num_classes, dim)
        self.scale = float(self.default_scale if scale is None else scale)
        self.s = Scale(self.scale, learn_scale)
        self.weight = nn.Parameter(torch.empty(num_classes, dim))
        self.bias = nn.Parameter(torch.zeros(num_classes))
        nn.init.normal_(self.weight, std=0.01)

    def hparams(self) -> dict:
        return {"scale": self.scale, "learn_scale": self.s.learn}

    def logits(self, embeddings: torch.Tensor) -> torch.Tensor:
        return F.linear(self.s() * embeddings, self.weight, self.bias)

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        self.check_batch(embeddings, labels)
        return self.loss_from_logits(self.logits(embeddings), labels)

    def class_centers(self) -> torch.Tensor:
        return F.normalize(self.weight.detach().float(), dim=1)


class MarginSoftmaxHead(Head):
    """Normalised-weight softmax ``s * cos(theta)`` with a margin on the target class.

    Subclasses override :meth:`target_logit` only. With ``margin=0`` every variant
    is the same normalised softmax (NormFace).

    Parameters
    ----------
    num_classes, dim : size of the class-centre matrix ``W`` (num_classes x dim).
    scale : ``s``, the inverse temperature applied to cosines.
    margin : ``m``, the variant's margin.
    learn_scale : learn ``s`` with the head, starting from ``scale`` (NormFace).
    """

    name = "normface"
    softmax_type = True
    default_scale = 30.0
    default_margin = 0.0

    def __init__(self, num_classes: int, dim: int, *, scale: float | None = None,
                 margin: float | None = None, learn_scale: bool = False) -> None:
        super().__init__(num_classes, dim)
        self.scale = float(self.default_scale if scale is None else scale)
        self.margin = float(self.default_margin if margin is None else margin)
        self.s = Scale(self.scale, learn_scale)
        self.weight = nn.Parameter(torch.empty(num_classes, dim))
        nn.init.normal_(self.weight, std=0.01)

    def hparams(self) -> dict:
        return {"scale": self.scale, "margin": self.margin, "learn_scale": self.s.learn}

    def cosine(self, embeddings: torch.Tensor) -> torch.Tensor:
        return F.linear(F.normalize(embeddings, dim=1), F.normalize(self.weight, dim=1))

    def logits(self, embeddings: torch.Tensor) -> torch.Tensor:
        return self.cosine(embeddings)

    def target_logit(self, cos_target: torch.Tensor) -> torch.Tensor:
        """The margin-modified cosine of each sample's own class (identity here)."""
        return cos_target

    def margin_logits(self, cos: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Scaled logits with the target column replaced by :meth:`target_logit`."""
        target = cos.gather(1, labels[:, None])
        return self.s() * cos.scatter(1, labels[:, None], self.target_logit(target))

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        self.check_batch(embeddings, labels)
        return self.loss_from_logits(self.margin_logits(self.cosine(embeddings), labels), labels)

    def class_centers(self) -> torch.Tensor:
        return F.normalize(self.weight.detach().float(), dim=1)


class CosFaceHead(MarginSoftmaxHead):
    """CosFace / large-margin cosine loss: target logit ``cos(theta) - m``."""

    name = "cosface"
    default_scale = 30.0
    default_margin = 0.35

    def target_logit(self, cos_target: torch.Tensor) -> torch.Tensor:
        return cos_target - self.margin


class ArcFaceHead(MarginSoftmaxHead):
    """ArcFace / additive angular margin: target logit ``cos(theta + m)``.

    Where ``theta + m`` would pass pi the logit continues linearly
    (``cos(theta) - m sin(m)``), keeping it monotonic in theta, as in the
    paper's reference implementation.
    """

    name = "arcface"
    default_scale = 30.0
    default_margin = 0.5

    def target_logit(self, cos_target: torch.Tensor) -> torch.Tensor:
        m = self.margin
        cos_c = cos_target.clamp(-1 + 1e-7, 1 - 1e-7)
        sin = torch.sqrt(1.0 - cos_c * cos_c)
        phi = cos_c * math.cos(m) - sin * math.sin(m)
        return torch.where(cos_c > math.cos(math.pi - m), phi, cos_c - m * math.sin(m))
