"""Partial FC sharded by class over the ranks of a torch.distributed job (model parallelism).

The idea is InsightFace's (An et al. 2022, ``partial_fc_v2.py``): rank ``r`` of ``W`` owns the
centres of classes ``[r*C//W, (r+1)*C//W)`` and their optimizer state, so the head's memory
per rank is about 1/W of the whole. Each step:

1. every rank's (local) embeddings and labels are all-gathered, so each rank sees the global
   batch (``torch.distributed.nn.functional.all_gather``: its backward sums every rank's
   gradient of a rank's embeddings and hands that rank its share);
2. each rank samples negatives among its own rows (``sample_rate`` of them), keeping the
   rows of the batch's labels it owns;
3. the softmax normaliser is computed across shards: all-reduce of the per-sample maximum,
   then of the sum of exponentials and the target logit (which only the owner knows);
4. after backward, each rank updates its sampled rows with the row-wise optimizer.

With ``sample_rate=1`` this is exactly the margin softmax over all C classes of the global
batch, so W ranks give the losses, embedding gradients and centre updates of one process
(``tests/test_distributed.py`` checks it). Communication per step does not depend on C:
see :func:`megaclass.train.distributed.comm_bytes_per_step`.

Example (in each process of a job; ``group`` from ``torch.distributed``)::

    head = ShardedPartialFCHead(2_000_000, 256, rank=rank, world=world, sample_rate=0.1)
    loss = head(encoder(local_images), local_labels)   # same value on every rank
    loss.backward(); head.sparse_step(lr)
"""

from __future__ import annotations

import warnings
from typing import NoReturn

import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_nn
import torch.nn.functional as F

from ..errors import ConfigError
from .partial_fc import PartialFCHead


def shard_range(num_classes: int, rank: int, world: int) -> tuple[int, int]:
    """Classes ``[lo, hi)`` owned by ``rank`` of ``world`` (every shard non-empty when C >= W).

    >>> [shard_range(10, r, 3) for r in range(3)]
    [(0, 3), (3, 6), (6, 10)]
    """
    if world < 1 or not 0 <= rank < world:
        raise ConfigError(f"rank must be in [0, {world}), got {rank}")
    if num_classes < world:
        raise ConfigError(f"{num_classes} classes cannot be sharded over {world} processes: "
                          f"use at most {num_classes} processes")
    return rank * num_classes // world, (rank + 1) * num_classes // world


class ShardedPartialFCHead(PartialFCHead):
    """:class:`PartialFCHead` holding one rank's shard of the centres; the loss spans all shards.

    Parameters
    ----------
    num_classes, dim : the whole head's size (C x D); this rank stores ``class_range`` rows.
    rank, world : this process's rank and the number of shards.
    group : the process group of the head's collectives (None: the default group).
    **options : :class:`PartialFCHead` options (``sample_rate``, ``margin``, ``dtype``,
        ``optimizer``, ``reduction`` -- class weights only: no focal loss across shards).

    Attributes
    ----------
    class_range : ``(lo, hi)``, the global class ids of this shard's rows.
    """

    def __init__(self, num_classes: int, dim: int, *, rank: int, world: int, group=None,
                 **options) -> None:
        reduction = options.get("reduction")
        if reduction is not None and reduction.focal_gamma:
            raise ConfigError("focal loss is not available with a sharded partial_fc head (--nproc > 1)")
        super().__init__(num_classes, dim, shard=shard_range(num_classes, rank, world), **options)
        self.rank, self.world, self.group = int(rank), int(world), group

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        self.check_batch(embeddings, labels)
        e = F.normalize(embeddings.float(), dim=1)
        with warnings.catch_warnings():  # deprecated in torch 2.13 for a private module; still correct
            warnings.simplefilter("ignore", FutureWarning)
            e_all = torch.cat(dist_nn.all_gather(e, group=self.group))
        parts = [torch.empty_like(labels, dtype=torch.int64) for _ in range(self.world)]
        dist.all_gather(parts, labels.long(), group=self.group)
        return self._loss(e_all, torch.cat(parts), group=self.group)

    def _local_only(self, what: str) -> NoReturn:
        lo, hi = self.class_range
        raise ConfigError(f"{what} needs every class, but this shard holds classes [{lo}, {hi}): "
                          "run `megaclass reshard CKPT --world 1` and load its head")

    def logits(self, embeddings: torch.Tensor) -> torch.Tensor:
        self._local_only("logits")

    def predict(self, embeddings: torch.Tensor, k: int = 1):
        self._local_only("predict")

    def class_centers(self) -> torch.Tensor:
        """This shard's rows, normalised (global ids ``class_range``)."""
        return F.normalize(self.weight.float(), dim=1)
