"""Dense softmax heads: plain softmax and the cosine-margin family (CosFace, ArcFace).

:class:`MarginSoftmaxHead` scales cosines by ``s``, replaces the target class's cosine by a
:class:`~.margins.Margin` (a callable it is given) and reduces the cross-entropy with a
:class:`~.reduction.LossReduction`. CosFace (Wang et al. 2018, "CosFace: Large Margin
Cosine Loss") subtracts a margin from the target cosine; ArcFace (Deng et al. 2019,
"ArcFace: Additive Angular Margin Loss") adds it to the target angle: :class:`CosFaceHead`
and :class:`ArcFaceHead` are the margin head with that margin by default. The weight rows,
normalised, are the class centres.

Example
-------
>>> import torch, torch.nn.functional as F
>>> head = CosFaceHead(num_classes=10, dim=8)
>>> loss = head(F.normalize(torch.randn(4, 8), dim=1), torch.tensor([0, 1, 2, 3]))
>>> loss.ndim
0
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from .base import Head
from .margin_loss import margin_cross_entropy
from .margins import ArcFaceMargin, CosFaceMargin, Margin, NoMargin, resolve_margin
from .reduction import LossReduction, reduction_for
from .scale import Scale


class SoftmaxHead(Head):
    """Plain linear softmax with bias over the (normalised) embeddings: the baseline.

    The embeddings are multiplied by ``scale`` first (fixed, or learned with
    ``learn_scale=True``): on unit vectors a linear softmax without it learns very
    slowly (NormFace's observation; measured in ``megaclass bench heads``).
    """

    name = "softmax"
    default_scale = 16.0
    reduction: LossReduction

    def __init__(self, num_classes: int, dim: int, *, scale: float | None = None,
                 learn_scale: bool = False, reduction: LossReduction | None = None) -> None:
        super().__init__(num_classes, dim)
        self.reduction = reduction_for(reduction, num_classes)
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
        return self.reduction(self.logits(embeddings), labels)

    def class_centers(self) -> torch.Tensor:
        return F.normalize(self.weight.detach().float(), dim=1)


class MarginSoftmaxHead(Head):
    """Normalised-weight softmax ``s * cos(theta)`` with a margin on the target class.

    With the default margin (:class:`~.margins.NoMargin`) this is NormFace.

    Parameters
    ----------
    num_classes, dim : size of the class-centre matrix ``W`` (num_classes x dim).
    scale : ``s``, the inverse temperature applied to cosines.
    margin : a :class:`~.margins.Margin` (e.g. ``ArcFaceMargin(0.5)``), or the number ``m``
        for the margin named by ``margin_type`` (default: the class's own margin).
    margin_type : ``"normface"``, ``"cosface"`` or ``"arcface"`` when ``margin`` is a number.
    learn_scale : learn ``s`` with the head, starting from ``scale`` (NormFace).
    reduction : how the cross-entropy is reduced (focal loss, class weights); default the mean.

    Attributes
    ----------
    margin_fn : the :class:`~.margins.Margin` applied to the target cosine.
    """

    name = "normface"
    default_scale = 30.0
    margin_kind: ClassVar[type[Margin]] = NoMargin
    reduction: LossReduction

    def __init__(self, num_classes: int, dim: int, *, scale: float | None = None,
                 margin: float | Margin | None = None, margin_type: str | None = None,
                 learn_scale: bool = False, reduction: LossReduction | None = None) -> None:
        super().__init__(num_classes, dim)
        self.margin_fn = resolve_margin(margin, margin_type, self.margin_kind.name)
        self.reduction = reduction_for(reduction, num_classes)
        self.scale = float(self.default_scale if scale is None else scale)
        self.s = Scale(self.scale, learn_scale)
        self.weight = nn.Parameter(torch.empty(num_classes, dim))
        nn.init.normal_(self.weight, std=0.01)

    @property
    def margin(self) -> float:
        """``m`` of the margin."""
        return self.margin_fn.m

    def hparams(self) -> dict:
        return {"scale": self.scale, "margin": self.margin, "margin_type": self.margin_fn.name,
                "learn_scale": self.s.learn}

    def cosine(self, embeddings: torch.Tensor) -> torch.Tensor:
        return F.linear(F.normalize(embeddings, dim=1), F.normalize(self.weight, dim=1))

    def logits(self, embeddings: torch.Tensor) -> torch.Tensor:
        return self.cosine(embeddings)

    def margin_logits(self, cos: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Scaled logits with the target column replaced by ``margin_fn`` of it."""
        target = cos.gather(1, labels[:, None])
        return self.s() * cos.scatter(1, labels[:, None], self.margin_fn(target))

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        self.check_batch(embeddings, labels)
        if self.reduction.focal_gamma or self.s.learn:  # autograd through the B x C logits
            return self.reduction(self.margin_logits(self.cosine(embeddings), labels), labels)
        # the fused, chunked loss: same value and gradients, no B x C buffers, no normalised W copy
        return margin_cross_entropy(F.normalize(embeddings.float(), dim=1), self.weight, labels.long(),
                                    self.reduction.sample_weights(labels), self.scale, self.margin_fn)

    def class_centers(self) -> torch.Tensor:
        return F.normalize(self.weight.detach().float(), dim=1)


class CosFaceHead(MarginSoftmaxHead):
    """CosFace / large-margin cosine loss: target logit ``cos(theta) - m`` (m = 0.35 by default)."""

    name = "cosface"
    margin_kind = CosFaceMargin


class ArcFaceHead(MarginSoftmaxHead):
    """ArcFace / additive angular margin: target logit ``cos(theta + m)`` (m = 0.5 by default)."""

    name = "arcface"
    margin_kind = ArcFaceMargin
