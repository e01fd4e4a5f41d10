"""The inverse temperature ``s`` of softmax heads that read unit-length embeddings.

A softmax over cosines (or over a linear map of unit vectors) has logits in a narrow
range, so its probabilities stay near uniform and its gradients vanish unless the logits
are multiplied by a scale ``s`` -- the observation behind NormFace (Wang et al. 2017,
"NormFace: L2 Hypersphere Embedding for Face Verification"), which also learns ``s``.
Every softmax-family head here takes ``scale`` and ``learn_scale``; the defaults come
from the sweep of ``megaclass bench heads`` (see the README's head comparison).

Example
-------
>>> s = Scale(16.0, learn=True)
>>> round(s.current(), 3), [n for n, _ in s.named_parameters()]
(16.0, ['log_s'])
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ..errors import ConfigError


class Scale(nn.Module):
    """``s``: a fixed number, or ``exp(log_s)`` learned with the head (``learn=True``)."""

    def __init__(self, value: float, learn: bool = False) -> None:
        super().__init__()
        value = float(value)
        if not (math.isfinite(value) and value > 0):
            raise ConfigError(f"scale must be a positive number, got {value}")
        self.initial, self.learn = value, bool(learn)
        if self.learn:
            self.log_s = nn.Parameter(torch.tensor(math.log(value)))

    def forward(self) -> torch.Tensor | float:
        return self.log_s.exp() if self.learn else self.initial

    def current(self) -> float:
        """The scale's present value as a float (the learned one after training)."""
        return float(self.log_s.detach().exp()) if self.learn else self.initial
