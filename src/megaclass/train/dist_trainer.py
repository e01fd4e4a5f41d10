"""The training loop on one rank of a torch.distributed job: sharded Partial FC + DDP encoder.

:class:`DistributedTrainer` is the :class:`~megaclass.train.Trainer` with four things changed:

- the head is a :class:`~megaclass.heads.partial_fc_sharded.ShardedPartialFCHead` (this
  rank's classes and their optimizer state only);
- the encoder is wrapped in ``DistributedDataParallel`` (gradients summed over ranks, see
  :mod:`.distributed`);
- batches: every rank plans the same global m-per-class batches from the seed and reads
  its own contiguous slice of each (rank ``r`` of ``W`` takes items ``[r*B/W, (r+1)*B/W)``),
  so no two ranks read the same items and a run is deterministic under the seed; the
  global batch equals the one a single process would use;
- checkpoints are sharded (:mod:`.sharded`); only rank 0 shows progress.

``batch_size`` is the *global* batch. Start it through ``megaclass train --nproc N`` or
``torchrun ... -m megaclass.train``; in Python, inside a launched process::

    ctx = init_from_env()
    encoder = DistributedTrainer(source, ctx=ctx, head="partial_fc", steps=100).fit().encoder_
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from ..data.base import Source
from ..errors import ConfigError
from ..heads.partial_fc_sharded import ShardedPartialFCHead
from .checkpoint import latest_checkpoint, load_state
from .distributed import DistContext, DistributedError, check_same_options, describe_failure, wrap_encoder
from .sharded import load_shard, save_sharded
from .trainer import TrainConfig, Trainer, _jsonable


class DistributedTrainer(Trainer):
    """:class:`Trainer` for rank ``ctx.rank`` of ``ctx.world`` (see the module docstring).

    Raises ConfigError for options a distributed run does not support (heads other than
    ``partial_fc``, ``compatible_with``, ``freeze``, ``compile``, focal loss) and
    :class:`~megaclass.train.distributed.DistributedError` when another rank dies or hangs.
    """

    def __init__(self, source: Source, config: TrainConfig | None = None, *, ctx: DistContext,
                 **overrides) -> None:
        super().__init__(source, config, **overrides)
        self.ctx = ctx
        self.is_main = ctx.is_main
        c = self.config
        c.device = str(ctx.device)
        check_distributed_options(c, source.num_classes, ctx.world)

    def _make_head(self, name: str, options: dict) -> ShardedPartialFCHead:
        return ShardedPartialFCHead(self.source.num_classes, self.config.dim, rank=self.ctx.rank,
                                    world=self.ctx.world, group=self.ctx.head_group, **options)

    def _build(self):
        built = super()._build()
        # the same encoder and centres on every rank (seeded above), then one sampling stream per rank
        torch.manual_seed(self.config.seed * 1_000_003 + 7919 * (self.ctx.rank + 1))
        return built

    def _forward_fn(self, encoder):
        return wrap_encoder(encoder, self.ctx)

    def _epoch_batches(self, labels, cpb: int, epoch: int, n: int) -> list[list[int]]:
        r, w = self.ctx.rank, self.ctx.world
        batches = super()._epoch_batches(labels, cpb, epoch, n)
        return [b[r * len(b) // w: (r + 1) * len(b) // w] for b in batches]

    def _resume(self, encoder, head, opt, device):
        c = self.config
        ckpt = latest_checkpoint(c.checkpoint_dir) if (c.resume and c.checkpoint_dir) else None
        if ckpt is None:
            return encoder, head, opt, 0
        rng = load_shard(ckpt, head, self.ctx)  # checks the world size and every shard first
        opt_state, info = load_state(ckpt)
        from ..models import Encoder

        encoder = Encoder.load(ckpt / "encoder").to(device)
        head = self._loss_options(head).to(device)
        opt = self._optimizer(encoder, head)
        opt.load_state_dict(opt_state)
        self.history_ = info.get("history", [])
        if rng is not None:
            torch.set_rng_state(rng)
        return encoder, head, opt, int(info["step"])

    def _checkpoint(self, encoder, head, opt, step: int, epoch: int) -> None:
        from dataclasses import asdict

        info = {"step": step, "epoch": epoch, "config": _jsonable(asdict(self.config)),
                "history": self.history_}
        save_sharded(self.config.checkpoint_dir, ctx=self.ctx, encoder=encoder, head=head,
                     optimizer=opt, info=info)

    def fit(self):
        """Train on this rank (every rank must call it); returns the trainer (``encoder_`` is the
        same on every rank)."""
        from dataclasses import asdict

        options = {**_jsonable(asdict(self.config)), "progress": None, "device": None,
                   "data": [self.source.num_classes, len(self.source), type(self.source).__name__]}
        try:
            check_same_options(self.ctx, options)
            super().fit()
        except (dist.DistError, RuntimeError) as exc:
            if isinstance(exc, ConfigError):
                raise
            raise DistributedError(describe_failure(exc, self.ctx)) from exc
        self.images_per_second_ *= self.ctx.world  # every rank read its share of each batch
        return self


def check_distributed_options(c: TrainConfig, num_classes: int, world: int) -> None:
    """ConfigError for a configuration a ``world``-process run cannot train (checked before launch too)."""
    if isinstance(world, bool) or not isinstance(world, int) or world < 1:
        raise ConfigError(f"--nproc must be a positive integer, got {world!r}")
    if world > num_classes:
        raise ConfigError(f"{world} processes but the data has {num_classes} classes: each process needs "
                          f"at least one class of the head, use --nproc {num_classes} or fewer")
    if world == 1:
        return
    if c.head.lower() != "partial_fc":
        raise ConfigError(f"--nproc {world} trains the partial_fc head (sharded by class), "
                          f"got --head {c.head}")
    cpb = min(c.batch_size // c.m_per_class, num_classes)
    if (cpb * c.m_per_class) % world:
        raise ConfigError(f"the global batch ({cpb * c.m_per_class}) must split evenly over "
                          f"{world} processes")
    for flag, value in (("--compatible-with", c.compatible_with), ("--freeze", c.freeze),
                        ("--compile", c.compile), ("--focal-gamma", c.focal_gamma)):
        if value:
            raise ConfigError(f"{flag} is not supported with --nproc > 1 yet")
