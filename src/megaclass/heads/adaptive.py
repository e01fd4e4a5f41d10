"""Adaptive softmax (Grave et al. 2016, "Efficient softmax approximation for GPUs").

Classes are ranked by training frequency; the most frequent ones sit in a small "head"
softmax together with one logit per tail cluster, and each tail cluster's classes are
scored by a cheaper low-rank projection (``dim / div_value ** i``) only for the samples
whose target is in that cluster. This wraps ``torch.nn.AdaptiveLogSoftmaxWithLoss``.

The gain depends on skew. With a Zipf-like class distribution (words, products,
species) most samples hit the small head cluster and a step costs a fraction of a full
softmax. With balanced classes (face identities, the glyph benchmark) the head cluster
must hold most classes to cover most samples, every tail cluster is visited every step,
and adaptive softmax is about as expensive as the dense one -- ``megaclass bench heads``
measures exactly that uniform case. The low-rank tails also mean it has no cosine class
centres to export to a gallery (``class_centers()`` is None).

Example
-------
>>> import torch
>>> head = AdaptiveHead(100, 16, class_counts=torch.arange(100, 0, -1))
>>> head.cutoffs
[30, 62]
>>> head(torch.randn(4, 16), torch.tensor([0, 1, 50, 99])).ndim
0
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from ..errors import ConfigError
from .base import Head
from .scale import Scale

if TYPE_CHECKING:
    from ..data.base import Source

DEFAULT_MASS = (0.5, 0.85)


def frequency_cutoffs(counts, mass=DEFAULT_MASS) -> list[int]:
    """Cutoffs (class ranks) where the cumulative frequency of ranked classes reaches ``mass``."""
    counts = np.sort(np.asarray(counts, dtype=np.float64))[::-1]
    n = counts.size
    cum = np.cumsum(counts) / max(counts.sum(), 1e-12)
    cuts = sorted({int(np.searchsorted(cum, q) + 1) for q in mass})
    return [c for c in cuts if 0 < c < n] or [max(1, n // 2)]


class AdaptiveHead(Head):
    """Adaptive softmax over classes ranked by frequency.

    Parameters
    ----------
    num_classes, dim : number of classes and embedding size.
    cutoffs : increasing class ranks splitting head and tail clusters; default from
        ``class_counts`` (cumulative mass 50 % / 85 %) or, without counts, ``C/2, 0.85 C``.
    class_counts : training samples per class (the trainer passes them); sets the ranking.
    div_value : shrink factor of each tail cluster's projection.
    scale : multiplies the (unit) embeddings before the linear layers (an inverse temperature).
    learn_scale : learn ``scale`` with the head (see :mod:`.scale`).

    Attributes
    ----------
    rank : (num_classes,) buffer, the frequency rank of each class id.
    """

    name = "adaptive"
    rank: torch.Tensor  # buffer

    def __init__(self, num_classes: int, dim: int, *, cutoffs=None, class_counts=None,
                 div_value: float = 4.0, scale: float = 16.0, learn_scale: bool = False) -> None:
        super().__init__(num_classes, dim)
        if class_counts is not None:
            counts = np.asarray(class_counts, dtype=np.float64).ravel()
            if counts.size != num_classes:
                raise ConfigError(f"class_counts needs {num_classes} entries, got {counts.size}")
            order = np.argsort(-counts, kind="stable")
        else:
            counts = np.ones(num_classes)
            order = np.arange(num_classes)
        if cutoffs is None:
            cutoffs = frequency_cutoffs(counts)
        cutoffs = [int(c) for c in cutoffs]
        if not cutoffs or cutoffs != sorted(set(cutoffs)) or cutoffs[0] < 1 or cutoffs[-1] >= num_classes:
            raise ConfigError(f"cutoffs must be increasing integers in [1, {num_classes - 1}], got {cutoffs}")
        if dim // (div_value ** len(cutoffs)) < 1:
            raise ConfigError(f"div_value={div_value} with {len(cutoffs)} tail clusters shrinks a {dim}-d "
                              "embedding to 0 dims: lower div_value or use fewer cutoffs")
        rank = np.empty(num_classes, dtype=np.int64)
        rank[order] = np.arange(num_classes)
        self.cutoffs, self.div_value, self.scale = cutoffs, float(div_value), float(scale)
        self.s = Scale(self.scale, learn_scale)
        self.register_buffer("rank", torch.from_numpy(rank))
        self.asm = nn.AdaptiveLogSoftmaxWithLoss(dim, num_classes, cutoffs, div_value=self.div_value)

    @classmethod
    def source_options(cls, source: Source, options: dict) -> dict:
        """Trainer hook: rank classes by their frequency in ``source``."""
        if "class_counts" not in options and "cutoffs" not in options:
            options = {**options, "class_counts": np.bincount(source.labels, minlength=source.num_classes)}
        return options

    def hparams(self) -> dict:
        return {"cutoffs": self.cutoffs, "div_value": self.div_value, "scale": self.scale,
                "learn_scale": self.s.learn}

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        self.check_batch(embeddings, labels)
        return self.asm(self.s() * embeddings, self.rank[labels.long()]).loss

    def logits(self, embeddings: torch.Tensor) -> torch.Tensor:
        """``(B, C)`` log-probabilities in class-id order."""
        return self.asm.log_prob(self.s() * embeddings).index_select(1, self.rank)
