"""Two-level (hierarchical) softmax: P(class) = P(group) * P(class | group).

Goodman 2001 / Morin & Bengio 2005: a softmax over G groups plus, for each sample, a
softmax over the classes of its own group only, so a training step scores
``G + |group|`` rows instead of C (with ``G ~ sqrt(C)``: ~2 sqrt(C)). Both levels are
cosine classifiers with scale ``s`` (and an optional CosFace margin at the class level),
so the class rows are exportable class centres like CosFace's.

Groups come from, in order of precedence: ``groups`` (a group index per class), a
taxonomy file (``taxonomy`` + ``class_names``, see :mod:`.taxonomy`), k-means over given
``centers`` (e.g. a trained CosFace head's), or contiguous blocks of class ids.
Inference (:meth:`HierarchicalHead.predict`) is a beam search: the ``beam`` most likely
groups, then the best classes inside them -- ranked by their own cosine (``rank="class"``,
the default) or by log P(group) + log P(class | group) (``rank="joint"``). Measured at 10k
classes (``bench heads``): the group softmax picks the right group for 70 % of test
samples but has it among the top 4 for 95 %, and inside the right group the class rows
are 98 % right, so the joint score (74 % top-1) is dominated by the group's error while
ranking the beam's classes by cosine keeps the class rows' accuracy.

The class rows are a buffer updated row-wise like Partial FC's (:mod:`.rowwise`): a
step gathers the rows of the batch's groups, in slot order, into one small leaf tensor,
backward yields their gradient and :meth:`HierarchicalHead.sparse_step` updates those
rows and their optimizer state only -- no dense ``C x D`` gradient, so memory is the
centres plus their state, as for Partial FC. The ``G x D`` group rows are an ordinary parameter
for the trainer's optimizer.

Example
-------
>>> import torch
>>> head = HierarchicalHead(100, 16, num_groups=10)
>>> head(torch.randn(4, 16), torch.tensor([0, 1, 50, 99])).ndim
0
>>> head.predict(torch.randn(2, 16), k=3)[1].shape
torch.Size([2, 3])
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from .base import Head
from .reduction import LossReduction, reduction_for
from .rowwise import OPTIMIZERS, init_rows_, make_state, rowwise_step, state_names
from .scale import Scale

if TYPE_CHECKING:
    from ..data.base import Source


class HierarchicalHead(Head):
    """Cosine softmax over groups times cosine softmax over the classes of a group.

    Parameters
    ----------
    num_classes, dim : number of classes and embedding size.
    groups : optional group index per class (0 .. G-1, every group non-empty).
    taxonomy, class_names : a JSON/CSV taxonomy file and the classes' names in id order.
    centers : optional (C, D) class centres to cluster into ``num_groups`` groups (k-means).
    num_groups : number of groups for k-means / contiguous blocks (default ``round(sqrt(C))``).
    scale, margin : cosine scale ``s`` and CosFace margin ``m`` at the class level.
    learn_scale : learn ``s`` with the head (see :mod:`.scale`).
    beam : groups explored by :meth:`predict`.
    rank : how :meth:`predict` orders the beam's classes: ``"class"`` (their cosine) or
        ``"joint"`` (log P(group) + log P(class | group)).
    optimizer, momentum, weight_decay : the row-wise update of the class rows (``"sgd"`` or
        ``"adam"``); the trainer picks the one matching its own optimizer.
    reduction : how both levels' cross-entropies are reduced (focal loss, class weights).

    Attributes
    ----------
    group_of : (C,) buffer, group index of each class. ``group_names`` : names (taxonomy) or None.
    """

    name = "hierarchical"
    sparse = True
    reduction: LossReduction
    group_of: torch.Tensor  # buffers
    weight: torch.Tensor
    step_count: torch.Tensor

    def __init__(self, num_classes: int, dim: int, *, groups=None, taxonomy=None, class_names=None,
                 centers=None, num_groups: int | None = None, group_names: list[str] | None = None,
                 scale: float = 30.0, margin: float = 0.0, beam: int = 8, seed: int = 0,
                 learn_scale: bool = False, optimizer: str = "sgd", momentum: float = 0.9,
                 weight_decay: float = 0.0, rank: str = "class",
                 reduction: LossReduction | None = None) -> None:
        super().__init__(num_classes, dim)
        self.reduction = reduction_for(reduction, num_classes)
        self.scale, self.margin, self.beam = float(scale), float(margin), int(beam)
        self.s = Scale(self.scale, learn_scale)
        if self.beam < 1:
            raise ConfigError(f"beam must be >= 1, got {beam}")
        if rank not in ("class", "joint"):
            raise ConfigError(f"rank must be 'class' or 'joint', got {rank!r}")
        self.rank = rank
        if optimizer not in OPTIMIZERS:
            raise ConfigError(f"optimizer must be one of {OPTIMIZERS}, got {optimizer!r}")
        self.optimizer, self.momentum, self.weight_decay = optimizer, float(momentum), float(weight_decay)
        if groups is None and taxonomy is not None:
            if class_names is None:
                raise ConfigError("a taxonomy needs class_names (the classes' names in id order)")
            if len(class_names) != num_classes:
                raise ConfigError(f"class_names has {len(class_names)} names for {num_classes} classes")
            from .taxonomy import load_taxonomy

            groups, group_names = load_taxonomy(taxonomy, list(class_names))
        g = num_groups or max(2, round(math.sqrt(num_classes)))
        if groups is None and centers is not None:
            from .kmeans import kmeans_assign

            groups = kmeans_assign(torch.as_tensor(centers), min(g, num_classes), seed=seed)
        if groups is None:
            groups = np.arange(num_classes) * g // num_classes
        groups = torch.as_tensor(np.asarray(groups), dtype=torch.int64).flatten()
        if groups.numel() != num_classes or int(groups.min()) < 0:
            raise ConfigError(f"groups needs {num_classes} non-negative group indices")
        # renumber to 0..G-1 so no group is empty
        uniq, groups = groups.unique(return_inverse=True)
        if group_names is not None and len(group_names) != uniq.numel():
            ok = len(group_names) > int(uniq.max())
            group_names = [group_names[i] for i in uniq.tolist()] if ok else None
        self.group_names = list(group_names) if group_names is not None else None
        self.num_groups = int(uniq.numel())
        self.register_buffer("group_of", groups)
        self.register_buffer("weight", init_rows_(torch.empty(num_classes, dim)))
        for key, buf in make_state(self.weight, optimizer, torch.float32, self.momentum).items():
            self.register_buffer(key, buf)
        self.register_buffer("step_count", torch.zeros((), dtype=torch.int64))
        self.group_weight = nn.Parameter(torch.empty(self.num_groups, dim).normal_(std=0.01))
        self._pending: tuple[torch.Tensor, torch.Tensor] | None = None
        self._rebuild()

    def hparams(self) -> dict:
        return {"num_groups": self.num_groups, "group_names": self.group_names, "scale": self.scale,
                "margin": self.margin, "beam": self.beam, "rank": self.rank, "learn_scale": self.s.learn,
                "optimizer": self.optimizer, "momentum": self.momentum, "weight_decay": self.weight_decay}

    @classmethod
    def source_options(cls, source: Source, options: dict) -> dict:
        """Trainer hook: a taxonomy is matched against the source's class names."""
        if options.get("taxonomy") is not None and options.get("class_names") is None:
            options = {**options, "class_names": list(source.class_names)}
        return options

    def _rebuild(self) -> None:
        """Derived tables: ``members`` (G, Smax) padded with -1, ``slot`` of each class in its group."""
        g = self.group_of
        slot, counts = _places(g, self.num_groups)
        members = torch.full((self.num_groups, int(counts.max())), -1, dtype=torch.int64)
        members[g, slot] = torch.arange(g.numel())
        self._members, self._slot, self._counts = members, slot, counts

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        state_dict = dict(state_dict)
        for key, buf in self.named_buffers():  # heads saved before the row-wise update had no state
            if key in state_names(self.optimizer, self.momentum) or key == "step_count":
                state_dict.setdefault(key, torch.zeros_like(buf))
        out = super().load_state_dict(state_dict, strict=strict, assign=assign)
        self._rebuild()
        return out

    def _group_logits(self, e: torch.Tensor) -> torch.Tensor:
        return self.s() * F.linear(e, F.normalize(self.group_weight, dim=1))

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        self.check_batch(embeddings, labels)
        labels = labels.long()
        e = F.normalize(embeddings, dim=1)
        groups = self.group_of[labels]
        loss = self.reduction(self._group_logits(e), groups, labels)
        ug, inv = groups.unique(return_inverse=True)
        rows = self._members[ug]                                  # (U, Smax), -1 = padding
        # groups are disjoint, so the batch's groups' rows are distinct: one gather in slot
        # order is the leaf (padding reads row 0; its logits are masked, its gradient is 0)
        flat = rows.flatten()
        w = self.weight.index_select(0, flat.clamp(min=0)).view(*rows.shape, -1).requires_grad_()
        if self.training and torch.is_grad_enabled():
            self._pending = (flat, w)
        cos = _OwnGroupCosines.apply(e, w, inv)                  # (B, Smax): own group only
        target = self._slot[labels][:, None]
        cos = cos.scatter(1, target, cos.gather(1, target) - self.margin)
        logits = (self.s() * cos).masked_fill(rows[inv] < 0, -math.inf)
        return loss + self.reduction(logits, target.squeeze(1), labels)

    def sparse_step(self, lr: float) -> None:
        """Row-wise optimizer update of the class rows used by the last forward (after backward)."""
        if self._pending is None:
            return
        index, leaf = self._pending
        self._pending = None
        if leaf.grad is None:
            return
        self.step_count += 1
        grad = leaf.grad.view(index.numel(), -1)
        current = leaf.detach().view(index.numel(), -1)  # the rows as the forward read them
        real = index >= 0
        if not bool(real.all()):  # drop the padding slots: row ids must be unique
            index, grad, current = index[real], grad[real], current[real]
        state = {k: getattr(self, k) for k in state_names(self.optimizer, self.momentum)}
        rowwise_step(self.weight, state, index, grad, lr=lr, kind=self.optimizer, current=current,
                     momentum=self.momentum, weight_decay=self.weight_decay, step=int(self.step_count))

    def logits(self, embeddings: torch.Tensor) -> torch.Tensor:
        """``(B, C)`` log P(class) = log P(group) + log P(class | group)."""
        e = F.normalize(embeddings, dim=1)
        log_pg = F.log_softmax(self._group_logits(e), dim=1)
        s = self.s() * F.linear(e, F.normalize(self.weight, dim=1))
        top = s.max(dim=1, keepdim=True).values
        sums = torch.zeros(s.shape[0], self.num_groups).index_add_(1, self.group_of, (s - top).exp())
        lse = sums.log() + top
        return s - lse[:, self.group_of] + log_pg[:, self.group_of]

    def predict(self, embeddings: torch.Tensor, k: int = 1, beam: int | None = None,
                rank: str | None = None):
        """Beam search: top-``beam`` groups, then their top-``k`` classes (ordered as ``rank``)."""
        rank = rank or self.rank
        beam = min(beam or self.beam, self.num_groups)
        k = min(k, beam * self._members.shape[1])
        e_all = F.normalize(embeddings.detach().float(), dim=1)
        chunk = max(1, 2**24 // max(1, beam * self._members.shape[1] * self.dim))  # ~64 MB at a time
        outs = []
        with torch.no_grad():
            w = F.normalize(self.weight, dim=1)
            for lo in range(0, e_all.shape[0], chunk):
                e = e_all[lo: lo + chunk]
                log_pg, top_g = F.log_softmax(self._group_logits(e), dim=1).topk(beam, dim=1)
                cand = self._members[top_g]                       # (b, beam, Smax)
                s = self.s() * torch.einsum("bd,bgsd->bgs", e, w[cand.clamp(min=0)])
                s = s.masked_fill(cand < 0, -math.inf)
                score = (s if rank == "class" else F.log_softmax(s, dim=2) + log_pg[:, :, None]).flatten(1)
                best, pos = score.topk(k, dim=1)
                outs.append((best, cand.flatten(1).gather(1, pos)))
        return torch.cat([o[0] for o in outs]), torch.cat([o[1] for o in outs])

    def class_centers(self) -> torch.Tensor:
        return F.normalize(self.weight.detach().float(), dim=1)


class _OwnGroupCosines(torch.autograd.Function):
    """``cos[b, j] = e[b] . w[inv[b], j] / |w[inv[b], j]|`` for unit ``e``, raw rows ``w``
    (U, Smax, D) and each sample's group slot ``inv``, with a hand-written backward.

    The samples are laid out by group, padded to the largest group's count, and multiplied
    with their group's rows in one batched matmul: ``(U, n, D) x (U, D, Smax)``. Gathering
    each sample's rows instead (``w[inv]``) moved ``B x Smax x D`` floats a step (256 MB at
    1M classes in 1,000 groups) and made the step 23x what its flops and traffic predict.
    The raw cosines are scaled by the rows' inverse norms (no normalised copy of the rows),
    and the backward is ``dcos/dw = e / |w| - cos w / |w|^2``: one batched matmul and one
    pass over the rows, where autograd's norm backward took several passes and half the
    step at 1M classes. (Rows of norm below 1e-12, which never occur after initialisation,
    are treated as having norm 1e-12.)"""

    @staticmethod
    def forward(ctx, e, w, inv):
        at, counts = _places(inv, w.shape[0])
        grid = e.new_zeros(w.shape[0], int(counts.max()), e.shape[1]).index_put_((inv, at), e)
        inv_norm = w.detach().norm(dim=2).clamp_min_(1e-12).reciprocal_()       # (U, Smax)
        cos = torch.bmm(grid, w.detach().transpose(1, 2)).mul_(inv_norm[:, None, :])  # (U, n, Smax)
        ctx.save_for_backward(grid, w, inv_norm, cos, inv, at)
        return cos[inv, at]

    @staticmethod
    def backward(ctx, g):
        grid, w, inv_norm, cos, inv, at = ctx.saved_tensors
        grid_g = torch.zeros_like(cos).index_put_((inv, at), g)                 # (U, n, Smax)
        scaled = grid_g * inv_norm[:, None, :]                                  # d loss / d raw dot
        grad_e = grad_w = None
        if ctx.needs_input_grad[0]:
            grad_e = torch.bmm(scaled, w)[inv, at]
        if ctx.needs_input_grad[1]:
            grad_w = torch.bmm(scaled.transpose(1, 2), grid)                    # (U, Smax, D)
            pull = (grid_g * cos).sum(1).mul_(inv_norm.square())                # (U, Smax)
            grad_w.addcmul_(w, pull[..., None], value=-1.0)
        return grad_e, grad_w, None


def _places(groups: torch.Tensor, num_groups: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Each item's place among the items of its group (in item order), and each group's count."""
    order = torch.argsort(groups, stable=True)
    counts = torch.bincount(groups, minlength=num_groups)
    starts = torch.cumsum(counts, 0) - counts
    place = torch.empty_like(groups)
    place[order] = torch.arange(groups.numel(), device=groups.device) - starts[groups[order]]
    return place, counts

