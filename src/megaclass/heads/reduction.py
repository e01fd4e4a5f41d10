"""Cross-entropy variants shared by softmax-type heads: focal loss and per-sample weights.

Focal loss (Lin et al. 2017, "Focal Loss for Dense Object Detection") multiplies each
sample's cross-entropy by ``(1 - p_t) ** gamma``, so well-classified samples count less;
``gamma = 0`` is the ordinary cross-entropy. Per-sample weights (e.g. the class-balanced
weights of Cui et al. 2019, :func:`megaclass.data.samplers.class_weights`) rescale each
sample's term; the result is their weighted mean.

Example
-------
>>> import torch
>>> logits, y = torch.tensor([[2.0, 0.0], [0.0, 2.0]]), torch.tensor([0, 0])
>>> bool(classification_loss(logits, y, gamma=2.0) < classification_loss(logits, y))
True
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def classification_loss(logits: torch.Tensor, targets: torch.Tensor, *, gamma: float = 0.0,
                        sample_weight: torch.Tensor | None = None) -> torch.Tensor:
    """Mean (focal) cross-entropy of ``logits`` (B, K) at columns ``targets`` (B,)."""
    if gamma == 0.0 and sample_weight is None:
        return F.cross_entropy(logits, targets)
    logp = F.log_softmax(logits.float(), dim=1).gather(1, targets[:, None]).squeeze(1)
    loss = -logp
    if gamma:
        loss = loss * (1.0 - logp.exp()).clamp(min=0.0) ** gamma
    if sample_weight is None:
        return loss.mean()
    return (loss * sample_weight).sum() / sample_weight.sum().clamp(min=1e-12)
