"""Partial FC with row-sparse updates: margin softmax over a sample of class centres.

An, Deng et al. 2022, "Killing Two Birds with One Stone: Efficient and Robust Training
of Face Recognition CNNs by Partial FC" (InsightFace ``partial_fc_v2.py``): each step
uses the class centres of every label in the batch plus a uniform random sample of the
other centres, so its cost is ``O(B * D * k)`` with ``k ~ sample_rate * C``. With
``sample_rate=1`` Partial FC *equals* the full margin softmax (same loss, same gradients,
same update) -- ``tests/test_heads_partial_fc.py`` checks it.

Unlike the reference (``self.weight[index]`` on an ``nn.Parameter``, whose backward
writes a dense ``C x D`` gradient), the centres here are a plain buffer: the sampled rows
are gathered into a small leaf tensor, the loss's backward yields a ``(k, D)`` gradient,
and :meth:`PartialFCHead.sparse_step` applies a row-wise SGD-momentum or Adam update to
those rows only (:mod:`.rowwise`). The margin softmax + cross-entropy is one fused
autograd function holding two ``B x k`` buffers. Centres and optimizer state can be
stored in bfloat16/float16 (math is float32). The trainer calls ``sparse_step`` for you::

    head = PartialFCHead(1_000_000, 256, sample_rate=0.1)
    for images, labels in loader:
        loss = head(encoder(images), labels)
        opt.zero_grad(); loss.backward(); opt.step()   # opt holds the encoder only
        head.sparse_step(lr)

Example
-------
>>> import torch, torch.nn.functional as F
>>> head = PartialFCHead(1000, 16, sample_rate=0.1)
>>> loss = head(F.normalize(torch.randn(8, 16), dim=1), torch.arange(8))
>>> loss.backward(); head.sparse_step(lr=0.1)
>>> head.last_sampled_
100
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

from ..errors import ConfigError
from .base import Head
from .margin_loss import margin_cross_entropy
from .margins import Margin, resolve_margin
from .reduction import LossReduction, reduction_for
from .rowwise import DTYPES, OPTIMIZERS, check_memory, make_state, rowwise_step, state_names


class PartialFCHead(Head):
    """Margin softmax over the batch's positive centres plus sampled negatives, sparse updates.

    Parameters
    ----------
    num_classes, dim : size of the class-centre matrix (num_classes x dim).
    sample_rate : float in (0, 1], default 0.1
        Share of centres used per step (positives are always included).
    margin : a :class:`~.margins.Margin` (e.g. ``ArcFaceMargin(0.5)``), or the number ``m``
        for the margin named by ``margin_type`` (default: that margin's own ``m``).
    margin_type : ``"cosface"`` (default), ``"arcface"`` or ``"normface"`` (no margin), when
        ``margin`` is a number.
    scale : the margin softmax's ``s`` (default 30).
    reduction : how the cross-entropy is reduced (focal loss, class weights); default the mean.
    dtype : ``"float32"`` (default), ``"bfloat16"`` or ``"float16"`` storage of centres and state.
    optimizer : ``"sgd"`` (momentum, Nesterov) or ``"adam"`` (AdamW-style, lazy): the row-wise
        update :meth:`sparse_step` applies. The trainer picks the one matching its optimizer.
    momentum, weight_decay : optimizer settings.
    check_memory : refuse (``InsufficientMemoryError``) before allocating when centres + state
        would not fit in 90 % of the available RAM.

    Attributes
    ----------
    weight : (num_classes, dim) buffer, the raw centres (normalised on use); a shard holds
        rows ``class_range`` only (:class:`~.partial_fc_sharded.ShardedPartialFCHead`).
    last_sampled_ : number of centres used by the last step.

    See Also
    --------
    CosFaceHead, ArcFaceHead : the dense heads this equals at ``sample_rate=1``.
    """

    name = "partial_fc"
    sparse = True
    default_scale = 30.0
    reduction: LossReduction
    weight: torch.Tensor  # buffers
    step_count: torch.Tensor

    def __init__(self, num_classes: int, dim: int, *, sample_rate: float = 0.1,
                 margin_type: str | None = None, scale: float | None = None,
                 margin: float | Margin | None = None, reduction: LossReduction | None = None,
                 dtype: str = "float32", optimizer: str = "sgd", momentum: float = 0.9,
                 weight_decay: float = 5e-4, check_memory: bool = True,
                 shard: tuple[int, int] | None = None) -> None:
        super().__init__(num_classes, dim)
        if isinstance(sample_rate, bool) or not 0.0 < float(sample_rate) <= 1.0:
            raise ConfigError(f"sample_rate must be in (0, 1], got {sample_rate!r}")
        self.margin_fn = resolve_margin(margin, margin_type, "cosface")
        self.reduction = reduction_for(reduction, num_classes)
        if dtype not in DTYPES:
            raise ConfigError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
        if optimizer not in OPTIMIZERS:
            raise ConfigError(f"optimizer must be one of {OPTIMIZERS}, got {optimizer!r}")
        self.sample_rate = float(sample_rate)
        self.scale = float(self.default_scale if scale is None else scale)
        self.dtype_name, self.optimizer = dtype, optimizer
        self.momentum, self.weight_decay = float(momentum), float(weight_decay)
        storage = DTYPES[dtype]
        lo, hi = shard if shard is not None else (0, num_classes)
        if not 0 <= lo < hi <= num_classes:
            raise ConfigError(f"shard must be a non-empty class range in [0, {num_classes}), got {shard!r}")
        self.class_range = (int(lo), int(hi))
        if check_memory:
            check_memory_for(hi - lo, dim, dtype, optimizer, momentum, self.sample_rate)
        seed = int(torch.randint(0, 2**31 - 1, ()))  # one draw: the same centres on every rank
        self.register_buffer("weight", init_block_rows_(torch.empty(hi - lo, dim, dtype=storage), seed, lo))
        for key, buf in make_state(self.weight, optimizer, storage, self.momentum).items():
            self.register_buffer(key, buf)
        self.register_buffer("step_count", torch.zeros((), dtype=torch.int64))
        self._pending: tuple[torch.Tensor, torch.Tensor] | None = None
        self._backward_lr: float | Callable[[], float] | None = None
        self.last_sampled_ = 0

    def hparams(self) -> dict:
        return {"sample_rate": self.sample_rate, "margin_type": self.margin_type, "scale": self.scale,
                "margin": self.margin, "dtype": self.dtype_name, "optimizer": self.optimizer,
                "momentum": self.momentum, "weight_decay": self.weight_decay}

    @property
    def margin_type(self) -> str:
        """The margin's name (``cosface``, ``arcface``, ``normface``)."""
        return self.margin_fn.name

    @property
    def margin(self) -> float:
        """``m`` of the margin."""
        return self.margin_fn.m

    # -- sampling -----------------------------------------------------------------
    def sample(self, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(index, targets)``: sorted unique rows to use and each label's position in them.

        On a shard, rows and labels are local (``label - class_range[0]``) and a label of
        another shard has target -1; its positives are the batch's labels it owns."""
        lo, hi = self.class_range
        local = labels - lo
        own = (local >= 0) & (local < hi - lo)
        positives = local[own].unique()
        c = hi - lo
        k = max(positives.numel(), min(c, math.ceil(self.sample_rate * c)))
        need = k - positives.numel()
        if need > 0:
            if need > c // 4:
                is_pos = torch.zeros(c, dtype=torch.bool)
                is_pos[positives] = True
                perm = torch.randperm(c)
                negatives = perm[~is_pos[perm]][:need]
            else:
                negatives = _sample_without(c, need, positives)
            index = torch.cat([positives, negatives]).sort().values
        else:
            index = positives
        targets = torch.searchsorted(index, local.clamp(0, c - 1))
        return index, targets.masked_fill_(~own, -1)

    # -- training ------------------------------------------------------------------
    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        self.check_batch(embeddings, labels)
        return self._loss(F.normalize(embeddings.float(), dim=1), labels.long())

    def _loss(self, e: torch.Tensor, labels: torch.Tensor, group=None) -> torch.Tensor:
        """The loss of unit embeddings ``e`` over this head's rows (all-reduced over ``group``)."""
        index, targets = self.sample(labels)
        self.last_sampled_ = index.numel()
        reduction = self.reduction
        if self.training and self._backward_lr is not None and not reduction.focal_gamma:
            self._pending = None  # rows read from the storage chunk by chunk, updated in backward
            return margin_cross_entropy(e, self.weight, targets, reduction.sample_weights(labels), self.scale,
                                        self.margin_fn, group=group, index=index, sink=self._update_rows)
        rows = self.weight.index_select(0, index).float().requires_grad_()
        if self.training:
            self._pending = (index, rows)
        if reduction.focal_gamma:  # focal loss: plain autograd (keeps more B x k buffers)
            if group is not None:
                raise ConfigError("focal loss is not available with a sharded partial_fc head (--nproc > 1)")
            cos = F.linear(e, F.normalize(rows, dim=1))
            t = cos.gather(1, targets[:, None])
            logits = self.scale * cos.scatter(1, targets[:, None], self.margin_fn(t))
            return reduction(logits, targets, labels)
        a = reduction.sample_weights(labels)
        return margin_cross_entropy(e, rows, targets, a, self.scale, self.margin_fn, group=group)

    def update_in_backward(self, lr) -> None:
        """Apply the row-wise update inside each following backward, chunk by chunk, at ``lr``
        (a number, or a function returning the current one; None: back to :meth:`sparse_step`).

        The sampled rows are then read from the storage chunk by chunk and updated as soon as
        their gradient is known, so neither their float32 copy nor their ``(k, D)`` gradient is
        held whole (1M x 256, rate 0.1: peak RSS 1.28x -> 1.20x centres + state, README); the
        result is bit for bit backward + :meth:`sparse_step`, which then has nothing to do."""
        if lr is not None and not callable(lr) and not float(lr) >= 0:
            raise ConfigError(f"lr must be a number >= 0 or a function returning one, got {lr!r}")
        self._backward_lr = lr

    def _update_rows(self, index: torch.Tensor, grad: torch.Tensor, *, first: bool = True) -> None:
        lr = self._backward_lr() if callable(self._backward_lr) else self._backward_lr
        if lr is None:
            raise RuntimeError("rows updated inside backward without update_in_backward(lr)")
        self._step_rows(index, grad, float(lr), count=first)

    def sparse_step(self, lr: float) -> None:
        """Row-wise optimizer update of the rows used by the last forward (after backward)."""
        if self._pending is None:
            return
        index, rows = self._pending
        self._pending = None
        grad, rows.grad = rows.grad, None
        current = rows.detach()  # the rows as the forward read them: no second gather
        # the caller's last loss still holds the (k, D) leaf until its next forward: free it now
        rows.data = rows.new_empty(0)
        if grad is not None:
            self._step_rows(index, grad, lr, current=current)

    def _step_rows(self, index: torch.Tensor, grad: torch.Tensor, lr: float, count: bool = True,
                   current: torch.Tensor | None = None) -> None:
        if count:
            self.step_count += 1
        state = {k: getattr(self, k) for k in state_names(self.optimizer, self.momentum)}
        rowwise_step(self.weight, state, index, grad, lr=lr, kind=self.optimizer, current=current,
                     momentum=self.momentum, weight_decay=self.weight_decay, step=int(self.step_count))

    # -- inference -------------------------------------------------------------------
    def logits(self, embeddings: torch.Tensor) -> torch.Tensor:
        return F.linear(F.normalize(embeddings.float(), dim=1), self.class_centers())

    def predict(self, embeddings: torch.Tensor, k: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
        """Exact top-k cosine over all centres, in chunks of rows (no B x C matrix)."""
        e = F.normalize(embeddings.detach().float(), dim=1)
        k = min(k, self.num_classes)
        best_s = torch.full((e.shape[0], k), -math.inf)
        best_i = torch.zeros((e.shape[0], k), dtype=torch.int64)
        step = 262144
        with torch.no_grad():
            for lo in range(0, self.num_classes, step):
                w = F.normalize(self.weight[lo: lo + step].float(), dim=1)
                s = e @ w.t()
                kk = min(k, s.shape[1])
                cs, ci = s.topk(kk, dim=1)
                all_s = torch.cat([best_s, cs], 1)
                all_i = torch.cat([best_i, ci + lo], 1)
                best_s, pos = all_s.topk(k, dim=1)
                best_i = all_i.gather(1, pos)
        return best_s, best_i

    def class_centers(self) -> torch.Tensor:
        return F.normalize(self.weight.float(), dim=1)

    def state_bytes(self) -> int:
        """Bytes of centres + optimizer state."""
        return sum(b.numel() * b.element_size() for b in self.buffers())


def check_memory_for(num_classes: int, dim: int, dtype: str = "float32", optimizer: str = "sgd",
                     momentum: float = 0.9, sample_rate: float = 0.1, batch: int = 256) -> int:
    """Estimate the bytes a :class:`PartialFCHead` needs and fail fast if RAM is short."""
    n_state = len(state_names(optimizer, momentum))
    item = torch.empty((), dtype=DTYPES[dtype]).element_size()
    k = math.ceil(sample_rate * num_classes)
    needed = num_classes * dim * item * (1 + n_state) + 4 * k * (3 * dim + 2 * batch)
    check_memory(f"partial_fc with {num_classes:,} classes x {dim} dims ({dtype}, {optimizer})", needed)
    return needed


_INIT_BLOCK = 4096


def init_block_rows_(weight: torch.Tensor, seed: int, first_row: int = 0, std: float = 0.01) -> torch.Tensor:
    """Fill ``weight`` (rows ``first_row..`` of a centre matrix) with N(0, std^2).

    Rows are drawn in blocks of 4096, block ``b`` from a generator seeded ``seed + b``, so
    a shard holding rows [lo, hi) gets exactly the rows the whole matrix would have."""
    n, d = weight.shape
    hi = first_row + n
    for b in range(first_row // _INIT_BLOCK, (hi - 1) // _INIT_BLOCK + 1):
        start = b * _INIT_BLOCK
        gen = torch.Generator().manual_seed(seed + b)
        block = torch.randn(_INIT_BLOCK, d, generator=gen).mul_(std)
        s, e = max(first_row, start), min(hi, start + _INIT_BLOCK)
        weight[s - first_row: e - first_row].copy_(block[s - start: e - start])
    return weight


def _sample_without(c: int, need: int, exclude: torch.Tensor) -> torch.Tensor:
    """``need`` distinct ids from ``range(c)`` minus ``exclude``, uniformly (need << c)."""
    got = torch.empty(0, dtype=torch.int64)
    while got.numel() < need:
        draw = torch.randint(0, c, (int((need - got.numel()) * 1.1) + 16,))
        got = torch.cat([got, draw]).unique()
        got = got[~torch.isin(got, exclude)]
    return got[torch.randperm(got.numel())[:need]]
