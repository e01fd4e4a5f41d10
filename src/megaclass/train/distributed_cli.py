"""``megaclass train`` on one rank of a distributed job: train, then rank 0 saves and reports."""

from __future__ import annotations

import sys
from pathlib import Path

from ..errors import ConfigError, MegaclassError
from .distributed import DistContext, barrier, shutdown


def train_on_rank(ctx: DistContext, source, options: dict, model: Path, as_json: bool) -> None:
    """Train with :class:`~.dist_trainer.DistributedTrainer`; rank 0 writes ``model`` and prints.

    An option error every rank detects alike is printed by rank 0 only (the others exit
    with status 2 silently); any other error is printed by each rank that meets it."""
    from ..cli_common import _emit, console, err_console
    from .dist_trainer import DistributedTrainer

    try:
        trainer = DistributedTrainer(source, ctx=ctx, **options)
        if ctx.is_main and not as_json:
            lo_hi = [(r * source.num_classes // ctx.world, (r + 1) * source.num_classes // ctx.world)
                     for r in (0, ctx.world - 1)]
            err_console.print(f"distributed: world size {ctx.world} ({ctx.backend}), partial_fc sharded by "
                              f"class: rank 0 owns {lo_hi[0]}, rank {ctx.world - 1} owns {lo_hi[1]}; "
                              f"global batch {trainer.config.batch_size}", highlight=False)
        encoder = trainer.fit().encoder_
        if ctx.is_main:
            encoder.save(model)
        barrier(ctx)  # nobody reports success before the model is written
    except MegaclassError as exc:
        shutdown()
        if isinstance(exc, ConfigError) and not ctx.is_main:
            sys.exit(2)
        raise
    shutdown()
    if not ctx.is_main:
        return
    h = trainer.history_
    result = {"model": str(model), "classes": source.num_classes, "steps": len(h), "world_size": ctx.world,
              "final_loss": h[-1]["loss"] if h else None, "seconds": trainer.seconds_,
              "images_per_second": trainer.images_per_second_, "fingerprint": encoder.fingerprint()}
    if as_json:
        _emit(result, True)
    else:
        console.print(f"saved {model} ({source.num_classes:,} classes, {result['steps']} steps on "
                      f"{ctx.world} processes, loss {result['final_loss']}, "
                      f"{trainer.images_per_second_:,.0f} img/s)")
