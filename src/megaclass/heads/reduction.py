"""How a softmax head's per-sample cross-entropies become the batch's loss.

A :class:`LossReduction` is a part given to a softmax-type head (``softmax``, ``normface``,
``cosface``, ``arcface``, ``partial_fc``, ``hierarchical``: the heads whose constructor
takes ``reduction=``), as pytorch-metric-learning gives a loss a reducer. It holds two
training-time options, neither saved with the head:

- focal loss (Lin et al. 2017, "Focal Loss for Dense Object Detection") multiplies each
  sample's cross-entropy by ``(1 - p_t) ** focal_gamma``, so well-classified samples count
  less; ``focal_gamma = 0`` is the ordinary cross-entropy;
- per-class weights (e.g. the class-balanced weights of Cui et al. 2019,
  :func:`megaclass.data.samplers.class_weights`) weight each sample's term by its class;
  the loss is then their weighted mean.

The default, ``LossReduction()``, is the plain mean cross-entropy.

Example
-------
>>> import torch
>>> logits, y = torch.tensor([[2.0, 0.0], [0.0, 2.0]]), torch.tensor([0, 0])
>>> bool(LossReduction(focal_gamma=2.0)(logits, y) < LossReduction()(logits, y))
True
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..errors import ConfigError


class LossReduction:
    """Mean cross-entropy, optionally focal (``focal_gamma``) and class-weighted (``class_weight``).

    Parameters
    ----------
    focal_gamma : float >= 0, the focal loss's exponent (0: plain cross-entropy).
    class_weight : optional (C,) positive weights, one per class id.
    """

    def __init__(self, *, focal_gamma: float = 0.0, class_weight: torch.Tensor | None = None) -> None:
        if isinstance(focal_gamma, bool) or not (math.isfinite(focal_gamma) and focal_gamma >= 0):
            raise ConfigError(f"focal_gamma must be >= 0, got {focal_gamma}")
        if class_weight is not None:
            class_weight = torch.as_tensor(class_weight, dtype=torch.float32).flatten()
            if not bool(torch.isfinite(class_weight).all()) or bool((class_weight < 0).any()):
                raise ConfigError("class_weight must be finite and non-negative")
        self.focal_gamma = float(focal_gamma)
        self.class_weight = class_weight

    @property
    def is_plain(self) -> bool:
        """True for the plain mean cross-entropy (no focal term, no class weights)."""
        return self.focal_gamma == 0.0 and self.class_weight is None

    def check_classes(self, num_classes: int) -> None:
        """ConfigError unless the class weights (if any) have ``num_classes`` entries."""
        if self.class_weight is not None and self.class_weight.numel() != num_classes:
            raise ConfigError(f"class_weight needs {num_classes} entries, got {self.class_weight.numel()}")

    def sample_weights(self, labels: torch.Tensor) -> torch.Tensor:
        """``(B,)`` weights of the samples of class ``labels`` in the mean, summing to 1."""
        if self.class_weight is None:
            return torch.full((labels.numel(),), 1.0 / labels.numel(), device=labels.device)
        a = self.class_weight.to(labels.device)[labels]
        return a / a.sum().clamp_min(1e-12)

    def __call__(self, logits: torch.Tensor, targets: torch.Tensor,
                 labels: torch.Tensor | None = None) -> torch.Tensor:
        """The loss of ``logits`` (B, K) at columns ``targets`` (B,).

        ``labels`` (global class ids, default ``targets``) pick the class weights when the
        columns are a subset of the classes (Partial FC's sample, a hierarchical group).
        """
        weight = None
        if self.class_weight is not None:
            weight = self.class_weight.to(logits.device)[targets if labels is None else labels]
        return classification_loss(logits, targets, gamma=self.focal_gamma, sample_weight=weight)

    def __repr__(self) -> str:
        weights = "None" if self.class_weight is None else f"<{self.class_weight.numel()} classes>"
        return f"LossReduction(focal_gamma={self.focal_gamma}, class_weight={weights})"


def classification_loss(logits: torch.Tensor, targets: torch.Tensor, *, gamma: float = 0.0,
                        sample_weight: torch.Tensor | None = None) -> torch.Tensor:
    """Mean (focal) cross-entropy of ``logits`` (B, K) at columns ``targets`` (B,).

    >>> import torch
    >>> logits, y = torch.tensor([[2.0, 0.0], [0.0, 2.0]]), torch.tensor([0, 0])
    >>> bool(classification_loss(logits, y, gamma=2.0) < classification_loss(logits, y))
    True
    """
    if gamma == 0.0 and sample_weight is None:
        return F.cross_entropy(logits, targets)
    logp = F.log_softmax(logits.float(), dim=1).gather(1, targets[:, None]).squeeze(1)
    loss = -logp
    if gamma:
        loss = loss * (1.0 - logp.exp()).clamp(min=0.0) ** gamma
    if sample_weight is None:
        return loss.mean()
    return (loss * sample_weight).sum() / sample_weight.sum().clamp(min=1e-12)


def reduction_for(reduction: LossReduction | None, num_classes: int) -> LossReduction:
    """A head's reduction from its ``reduction=`` argument (None: the plain mean), checked."""
    if reduction is None:
        return LossReduction()
    if not isinstance(reduction, LossReduction):
        raise ConfigError(f"reduction must be a LossReduction, got {type(reduction).__name__}")
    reduction.check_classes(num_classes)
    return reduction
