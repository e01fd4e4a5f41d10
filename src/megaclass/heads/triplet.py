"""Triplet margin loss with batch-hard, semi-hard or cluster-based hard negative mining.

Schroff et al. 2015 (FaceNet: semi-hard negatives), Hermans et al. 2017 ("In Defense of
the Triplet Loss": batch-hard). The loss and the batch-hard / semi-hard miners are
pytorch-metric-learning's (``TripletMarginLoss``, ``BatchHardMiner``,
``TripletMarginMiner(type_of_triplets="semihard")``). ``mining="cluster"`` adds
cluster-based hard negatives: class prototypes (running means of each class's
embeddings) are grouped by k-means every ``recluster_every`` steps, and each anchor's
negative is the hardest sample of a *different class in the same cluster* (falling back
to the hardest negative of the batch) -- the confusable classes a uniform batch rarely
pairs. Pair it with batches that draw several classes per cluster for best effect.

The head has no weight matrix: its class centres are the normalised prototypes, so a
trained triplet head still exports to a gallery and predicts by nearest prototype.
Needs at least two samples per class in a batch (``m_per_class >= 2``).

Example
-------
>>> import torch
>>> head = TripletHead(10, 8, mining="batch_hard")
>>> head(torch.randn(8, 8), torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])).ndim
0
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..errors import ConfigError
from .base import Head

MINING = ("batch_hard", "semihard", "cluster")


class TripletHead(Head):
    """Triplet margin loss over the batch; prototypes per class as class centres.

    Parameters
    ----------
    num_classes, dim : number of classes and embedding size.
    margin : triplet margin (on distances of unit vectors).
    mining : ``"batch_hard"`` (default), ``"semihard"`` or ``"cluster"``.
    num_clusters : clusters of prototypes for ``cluster`` mining (default ``sqrt(C)``).
    recluster_every : steps between k-means runs (``cluster`` mining).
    proto_momentum : EMA factor of the prototypes.

    Attributes
    ----------
    prototypes : (C, D) buffer, running mean embedding of each class (zero until seen).
    cluster_of : (C,) buffer, the cluster of each class's prototype (-1 before clustering).
    """

    name = "triplet"
    prototypes: torch.Tensor  # buffers
    cluster_of: torch.Tensor
    steps: torch.Tensor

    def __init__(self, num_classes: int, dim: int, *, margin: float = 0.1, mining: str = "batch_hard",
                 num_clusters: int | None = None, recluster_every: int = 50,
                 proto_momentum: float = 0.9) -> None:
        super().__init__(num_classes, dim)
        if mining not in MINING:
            raise ConfigError(f"mining must be one of {MINING}, got {mining!r}")
        from pytorch_metric_learning import losses, miners

        self.margin, self.mining = float(margin), mining
        self.num_clusters = int(num_clusters or max(2, round(num_classes ** 0.5)))
        self.recluster_every, self.proto_momentum = int(recluster_every), float(proto_momentum)
        self.loss_fn = losses.TripletMarginLoss(margin=self.margin)
        self.miner = (miners.TripletMarginMiner(margin=self.margin, type_of_triplets="semihard")
                      if mining == "semihard" else miners.BatchHardMiner())
        self.register_buffer("prototypes", torch.zeros(num_classes, dim))
        self.register_buffer("cluster_of", torch.full((num_classes,), -1, dtype=torch.int64))
        self.register_buffer("steps", torch.zeros((), dtype=torch.int64))

    def hparams(self) -> dict:
        return {"margin": self.margin, "mining": self.mining, "num_clusters": self.num_clusters,
                "recluster_every": self.recluster_every, "proto_momentum": self.proto_momentum}

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        self.check_batch(embeddings, labels)
        labels = labels.long()
        if labels.unique().numel() == labels.numel():
            raise ConfigError("triplet loss needs at least two samples of some class per batch "
                              "(use m_per_class >= 2)")
        e = F.normalize(embeddings, dim=1)
        if self.training:
            self._update_prototypes(e.detach(), labels)
        if self.mining == "cluster" and int(self.cluster_of.max()) >= 0:
            triplets = self._cluster_triplets(e.detach(), labels)
        else:
            triplets = self.miner(e, labels)
        return self.loss_fn(e, labels, triplets)

    @torch.no_grad()
    def _update_prototypes(self, e: torch.Tensor, labels: torch.Tensor) -> None:
        uniq, inv = labels.unique(return_inverse=True)
        mean = torch.zeros(uniq.numel(), self.dim).index_add_(0, inv, e)
        mean = F.normalize(mean, dim=1)
        old = self.prototypes[uniq]
        fresh = old.norm(dim=1, keepdim=True) == 0
        mix = torch.where(fresh, mean, self.proto_momentum * old + (1 - self.proto_momentum) * mean)
        self.prototypes[uniq] = F.normalize(mix, dim=1)
        self.steps += 1
        if self.mining == "cluster" and (int(self.steps) - 1) % self.recluster_every == 0:
            self.recluster()

    @torch.no_grad()
    def recluster(self) -> None:
        """k-means over the prototypes seen so far; unseen classes stay in cluster -1."""
        from .kmeans import kmeans_assign

        seen = (self.prototypes.norm(dim=1) > 0).nonzero().squeeze(1)
        if seen.numel() < 2:
            return
        k = min(self.num_clusters, seen.numel())
        self.cluster_of.fill_(-1)
        self.cluster_of[seen] = torch.from_numpy(kmeans_assign(self.prototypes[seen], k))

    def _cluster_triplets(self, e: torch.Tensor, labels: torch.Tensor):
        """Hardest positive; hardest negative from the anchor's cluster (else the batch)."""
        sim = e @ e.t()
        same = labels[:, None] == labels[None, :]
        eye = torch.eye(len(labels), dtype=torch.bool)
        pos_ok = same & ~eye
        cl = self.cluster_of[labels]
        neg_any = ~same
        neg_cluster = neg_any & (cl[:, None] == cl[None, :]) & (cl[:, None] >= 0)
        neg_ok = torch.where(neg_cluster.any(1, keepdim=True), neg_cluster, neg_any)
        anchors = (pos_ok.any(1) & neg_ok.any(1)).nonzero().squeeze(1)
        pos = sim.masked_fill(~pos_ok, 2.0).argmin(1)[anchors]
        neg = sim.masked_fill(~neg_ok, -2.0).argmax(1)[anchors]
        return anchors, pos, neg

    def logits(self, embeddings: torch.Tensor) -> torch.Tensor:
        """Cosine to each class prototype."""
        return F.linear(F.normalize(embeddings, dim=1), self.prototypes)

    def class_centers(self) -> torch.Tensor:
        return F.normalize(self.prototypes.float(), dim=1)
