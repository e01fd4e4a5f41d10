"""Feeding the training loop: one persistent DataLoader whose workers know the epoch."""

from __future__ import annotations

import os

import torch

from ..data.base import Source


def default_num_workers(source: Source) -> int:
    """DataLoader workers when ``num_workers`` is None: ``min(4, CPUs)`` for a source that
    decodes image files (it says so with ``decodes_files = True``), else 1 (glyphs render
    ~10k images/s in one worker; arrays are already in memory)."""
    if getattr(source, "decodes_files", False):
        return max(1, min(4, os.cpu_count() or 1))
    return 1


class EpochBatches:
    """Batch sampler of a persistent DataLoader: the current epoch's batches, each index
    as ``(epoch, i)`` so that workers, which outlive the epoch, know which epoch it is."""

    def __init__(self) -> None:
        self.batches: list[list[int]] = []
        self.epoch = 0

    def set(self, batches: list[list[int]], epoch: int) -> None:
        self.batches, self.epoch = batches, int(epoch)

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self):
        e = self.epoch
        return iter([[(e, int(i)) for i in batch] for batch in self.batches])


class EpochView(torch.utils.data.Dataset):
    """A source read by ``(epoch, i)`` indices (:class:`EpochBatches`): calls the source's
    ``set_epoch`` when the epoch changes (in whichever process reads it), then its
    ``__getitems__`` (or ``__getitem__`` per item)."""

    def __init__(self, source: Source) -> None:
        self.source = source
        self._epoch = getattr(source, "epoch", None)

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, key: tuple[int, int]):
        return self.__getitems__([key])[0]

    def __getitems__(self, keys: list[tuple[int, int]]) -> list:
        epoch = keys[0][0] if keys else self._epoch
        if epoch != self._epoch and hasattr(self.source, "set_epoch"):
            self.source.set_epoch(epoch)
        self._epoch = epoch
        indices = [i for _, i in keys]
        if hasattr(self.source, "__getitems__"):
            return self.source.__getitems__(indices)
        return [self.source[i] for i in indices]


class BatchFeed:
    """One persistent DataLoader serving a whole run, so its worker processes (and what they
    decoded) persist across epochs; each index carries its epoch (:class:`EpochBatches`), so
    a source with ``set_epoch`` draws the epoch's samples in every worker. ``workers`` None
    means :func:`default_num_workers`; a run of at most 4 batches loads in-process."""

    def __init__(self, source: Source, workers: int | None, num_batches: int) -> None:
        workers = default_num_workers(source) if workers is None else workers
        workers = workers if num_batches > 4 else 0
        self.source = source
        self._plan = EpochBatches()
        self._data = torch.utils.data.DataLoader(
            EpochView(source), batch_sampler=self._plan, num_workers=workers,
            prefetch_factor=4 if workers else None, persistent_workers=workers > 0)

    def __call__(self, batches: list[list[int]], epoch: int) -> torch.utils.data.DataLoader:
        if hasattr(self.source, "set_epoch"):
            self.source.set_epoch(epoch)
        self._plan.set(batches, epoch)
        return self._data
