"""Helpers of tests/test_distributed*.py: worker functions (importable by the launcher's spawned processes)
and the CLI run in-process.

The equivalence runs fix BatchNorm (eval mode, an affine layer): BatchNorm normalises each rank's
slice of the batch with that slice's statistics (SyncBatchNorm runs only on GPUs), so with
it a world of 2 is a slightly different model than a world of 1, by design, not by error.
"""

from __future__ import annotations

import sys
import types
from unittest import mock

import numpy as np
from torch import nn

from megaclass import GlyphSource
from megaclass.errors import ConfigError
from megaclass.train import Trainer
from megaclass.train.dist_trainer import DistributedTrainer
from megaclass.train.distributed import check_same_options, init_from_env, shutdown

OPTIONS = dict(head="partial_fc", steps=3, batch_size=32, m_per_class=4, dim=16, widths=(8, 16),
               optimizer="sgd", lr=0.05, num_workers=0, progress=False,
               head_options={"sample_rate": 1.0})


def source() -> GlyphSource:
    return GlyphSource(range(40), samples_per_class=8, size=16)


def fix_batchnorm(module: nn.Module) -> nn.Module:
    """Every BatchNorm layer in eval mode for good (running stats 0/1: an affine layer)."""
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()
            m.train = types.MethodType(lambda self, mode=True: self, m)
    return module


class _FixedBN:
    def _encoder(self, spec):
        return fix_batchnorm(super()._encoder(spec))

    def _resume(self, encoder, head, opt, device):
        encoder, head, opt, step = super()._resume(encoder, head, opt, device)
        return fix_batchnorm(encoder), head, opt, step


class PlainNoBN(_FixedBN, Trainer):
    pass


class DistNoBN(_FixedBN, DistributedTrainer):
    pass


def summary(trainer) -> dict:
    enc, head = trainer.encoder_, trainer.head_
    return {"losses": [h["loss"] for h in trainer.history_],
            "params": {k: v.detach().numpy().copy() for k, v in enc.named_parameters()},
            "grads": {k: v.grad.numpy().copy() for k, v in enc.named_parameters() if v.grad is not None},
            "centres": head.weight.float().numpy().copy(), "class_range": list(head.class_range)}


def equivalence_worker(ckpt_dir: str) -> dict:
    """Rank's view of 3 steps at sample_rate 1 (checkpoint at step 2)."""
    ctx = init_from_env("gloo", timeout=60)
    try:
        try:  # ranks started with different options are refused at start-up, on every rank
            check_same_options(ctx, {"lr": 0.1 * (ctx.rank + 1), "steps": 3})
            mismatch = None
        except ConfigError as exc:
            mismatch = str(exc)
        trainer = DistNoBN(source(), ctx=ctx, checkpoint_dir=ckpt_dir, checkpoint_every=2, **OPTIONS)
        trainer.fit()
        return {**summary(trainer), "mismatch": mismatch}
    finally:
        shutdown()


def centres_of(results: dict) -> np.ndarray:
    return np.concatenate([results[r]["centres"] for r in sorted(results)])


def cli_in_process(argv: list[str]) -> int:
    """``megaclass ARGV`` run by this process (one interpreter start less: ~3.5 CPU-s); its exit code."""
    from megaclass import cli

    with mock.patch.object(sys, "argv", ["megaclass", *argv]):
        try:
            cli.main()
        except SystemExit as exc:
            return int(exc.code or 0)
    return 0
