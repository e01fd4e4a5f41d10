"""Batch samplers for metric learning and long-tailed data, plus loss weights.

Both samplers are *batch* samplers (pass them as ``DataLoader(batch_sampler=...)``)
and are deterministic given ``(seed, epoch)``: call :meth:`set_epoch` at the start
of every epoch, or each epoch repeats the same batches (as with
``DistributedSampler``). Work is vectorised numpy: items are grouped by label
once (argsort) and each epoch is planned in a handful of array operations, so
millions of labels cost well under a second per epoch.

Classes are visited as a stream of shuffled decks (each deck is a permutation of
all classes), so over an epoch every class is picked equally often (+-1). Within
a class, items are taken in a fresh shuffled order, cycling when exhausted.

Example
-------
>>> sampler = MPerClassSampler([0, 0, 1, 1, 2, 2], m=2, batch_size=4, seed=1)
>>> [len(batch) for batch in sampler]
[4, 4]
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
import torch
from torch.utils.data import Sampler

from ..errors import ConfigError, EmptyClassError, InvalidInputError

__all__ = ["MPerClassSampler", "ClassBalancedSampler", "class_weights"]


def _labels_array(labels) -> np.ndarray:
    if hasattr(labels, "labels") and not isinstance(labels, np.ndarray | torch.Tensor):
        labels = labels.labels  # a Source
    if isinstance(labels, torch.Tensor):
        labels = labels.detach().cpu().numpy()
    arr = np.asarray(labels)
    if arr.ndim != 1:
        raise InvalidInputError(f"labels must be one-dimensional, got shape {arr.shape}")
    if arr.size == 0:
        raise EmptyClassError("cannot sample from an empty label list")
    return arr


def _positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
        raise ConfigError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


class _Groups:
    """Item indices grouped by class: ``order[starts[c] : starts[c] + counts[c]]``."""

    def __init__(self, labels) -> None:
        arr = _labels_array(labels)
        _, inverse = np.unique(arr, return_inverse=True)
        self.inverse = inverse.reshape(-1).astype(np.int64)
        self.order = np.argsort(self.inverse, kind="stable")
        self.counts = np.bincount(self.inverse)
        self.starts = np.concatenate([[0], np.cumsum(self.counts)[:-1]])
        self.num_classes = len(self.counts)
        self.num_items = len(self.inverse)

    def shuffled(self, rng: np.random.Generator) -> np.ndarray:
        """``order`` with items shuffled within each class."""
        key = self.inverse + rng.random(self.num_items)
        return np.argsort(key)

    def draw(self, rng: np.random.Generator, picks: np.ndarray, m: int) -> np.ndarray:
        """``(len(picks), m)`` item indices; the j-th visit of a class continues its cycle."""
        by_class = np.argsort(picks, kind="stable")
        sorted_picks = picks[by_class]
        first = np.r_[True, sorted_picks[1:] != sorted_picks[:-1]]
        group_start = np.maximum.accumulate(np.where(first, np.arange(len(picks)), 0))
        visit = np.empty(len(picks), dtype=np.int64)
        visit[by_class] = np.arange(len(picks)) - group_start
        counts = self.counts[picks][:, None]
        offsets = (visit[:, None] * m + np.arange(m)) % counts
        return self.shuffled(rng)[self.starts[picks][:, None] + offsets]


def _class_stream(rng: np.random.Generator, num_classes: int, total: int,
                  block: int | None = None) -> np.ndarray:
    """``total`` class picks from concatenated random permutations.

    With ``block`` (<= num_classes), each consecutive run of ``block`` picks is
    duplicate-free: classes ending one deck are moved to the end of the next.
    """
    picks = np.empty(total, dtype=np.int64)
    pos = 0
    while pos < total:
        perm = rng.permutation(num_classes)
        tail = pos % block if block else 0
        if tail:
            used = np.isin(perm, picks[pos - tail : pos])
            perm = np.concatenate([perm[~used], perm[used]])
        n = min(num_classes, total - pos)
        picks[pos : pos + n] = perm[:n]
        pos += n
    return picks


class _BatchSampler(Sampler[list[int]]):
    def __init__(self, labels, batch_size: int, num_batches: int | None, seed: int) -> None:
        self._groups = _Groups(labels)
        self.batch_size = _positive_int("batch_size", batch_size)
        self.num_batches = (math.ceil(self._groups.num_items / self.batch_size) if num_batches is None
                            else _positive_int("num_batches", num_batches))
        self.seed = int(seed)
        self.epoch = 0

    @property
    def num_classes(self) -> int:
        """Number of distinct labels present."""
        return self._groups.num_classes

    def set_epoch(self, epoch: int) -> None:
        """Choose the epoch whose (deterministic) batches ``__iter__`` yields."""
        self.epoch = int(epoch)

    def _rng(self) -> np.random.Generator:
        return np.random.default_rng([self.seed % (1 << 64), self.epoch % (1 << 64)])

    def __len__(self) -> int:
        return self.num_batches

    def _plan(self, rng: np.random.Generator) -> np.ndarray:
        raise NotImplementedError

    def __iter__(self) -> Iterator[list[int]]:
        items = self._plan(self._rng()).reshape(self.num_batches, self.batch_size)
        for row in items:
            yield row.tolist()


class MPerClassSampler(_BatchSampler):
    """Batches of ``batch_size // m`` distinct classes with ``m`` items each.

    Items repeat within a class only when it has fewer than ``m`` items.
    ``len()`` defaults to ``ceil(len(labels) / batch_size)`` batches.

    Example
    -------
    >>> s = MPerClassSampler(np.repeat(np.arange(100), 5), m=4, batch_size=32)
    >>> s.set_epoch(3); batch = next(iter(s)); len(batch)
    32
    """

    def __init__(self, labels, *, m: int = 4, batch_size: int = 256,
                 num_batches: int | None = None, seed: int = 0) -> None:
        super().__init__(labels, batch_size, num_batches, seed)
        self.m = _positive_int("m", m)
        if self.batch_size % self.m:
            raise ConfigError(f"batch_size ({self.batch_size}) must be a multiple of "
                              f"m ({self.m})")
        self.classes_per_batch = self.batch_size // self.m
        if self.classes_per_batch > self.num_classes:
            raise ConfigError(
                f"batch_size // m = {self.classes_per_batch} classes per batch, but the "
                f"labels have only {self.num_classes} classes; lower batch_size or raise m")

    def _plan(self, rng: np.random.Generator) -> np.ndarray:
        k = self.classes_per_batch
        picks = _class_stream(rng, self.num_classes, self.num_batches * k, block=k)
        return self._groups.draw(rng, picks, self.m).reshape(-1)


class ClassBalancedSampler(_BatchSampler):
    """Batches whose classes are drawn uniformly, whatever their frequency.

    Each of the ``batch_size`` slots picks a class (cycling through shuffled decks
    of all classes, so rare and frequent classes appear equally often), then the
    next item of that class in a shuffled order.

    Example
    -------
    >>> s = ClassBalancedSampler([0] * 98 + [1, 2], batch_size=30, seed=0)
    >>> np.bincount(np.take([0] * 98 + [1, 2], next(iter(s)))).tolist()
    [10, 10, 10]
    """

    def __init__(self, labels, *, batch_size: int = 256, num_batches: int | None = None,
                 seed: int = 0) -> None:
        super().__init__(labels, batch_size, num_batches, seed)

    def _plan(self, rng: np.random.Generator) -> np.ndarray:
        picks = _class_stream(rng, self.num_classes, self.num_batches * self.batch_size)
        return self._groups.draw(rng, picks, 1).reshape(-1)


def class_weights(labels, *, beta: float = 0.999, num_classes: int | None = None
                  ) -> torch.Tensor:
    """Per-class loss weights from the "effective number of samples" (Cui et al. 2019).

    ``w_c = (1 - beta) / (1 - beta ** n_c)``, normalised to mean 1 over the classes
    present; ``labels`` are integer indices, the result has ``num_classes`` entries
    (default ``max(labels) + 1``) and classes without items get weight 0.
    ``beta = 0`` gives uniform weights, ``beta -> 1`` inverse frequency.

    Example
    -------
    >>> class_weights([0, 0, 0, 1], beta=0.9)
    tensor([0.5391, 1.4609])
    """
    arr = _labels_array(labels)
    if arr.dtype.kind not in "iu" or arr.min() < 0:
        raise InvalidInputError("class_weights needs non-negative integer label indices")
    if not 0.0 <= beta < 1.0:
        raise ConfigError(f"beta must be in [0, 1), got {beta}")
    size = int(arr.max()) + 1 if num_classes is None else int(num_classes)
    if size < int(arr.max()) + 1:
        raise ConfigError(f"num_classes={size} but labels go up to {int(arr.max())}")
    counts = np.bincount(arr, minlength=size).astype(np.float64)
    present = counts > 0
    weights = np.zeros(size)
    if beta == 0.0:
        weights[present] = 1.0
    else:
        effective = -np.expm1(counts[present] * np.log(beta)) / (1.0 - beta)
        weights[present] = 1.0 / effective
    weights[present] /= weights[present].mean()
    return torch.from_numpy(weights.astype(np.float32))
