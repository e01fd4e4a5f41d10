"""MPerClassSampler, ClassBalancedSampler and class_weights."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from megaclass.data.arrays import ArraySource
from megaclass.data.samplers import ClassBalancedSampler, MPerClassSampler, class_weights
from megaclass.errors import ConfigError, EmptyClassError, InvalidInputError


def long_tail(num_classes: int = 50, seed: int = 0) -> np.ndarray:
    """Labels with class sizes 1..~40, shuffled."""
    rng = np.random.default_rng(seed)
    sizes = rng.integers(1, 40, num_classes)
    return rng.permutation(np.repeat(np.arange(num_classes), sizes))


def test_m_per_class_batch_composition():
    labels = long_tail()
    sampler = MPerClassSampler(labels, m=4, batch_size=32, seed=3)
    batches = list(sampler)
    assert len(batches) == len(sampler) == -(-len(labels) // 32)
    for batch in batches:
        assert len(batch) == 32 and all(isinstance(i, int) for i in batch)
        groups = labels[np.array(batch)].reshape(8, 4)
        assert (groups == groups[:, :1]).all()  # m items of one class per group
        assert len(set(groups[:, 0])) == 8  # distinct classes
        for group, items in zip(groups[:, 0], np.array(batch).reshape(8, 4), strict=True):
            if (labels == group).sum() >= 4:  # no repeats unless the class is small
                assert len(set(items)) == 4


def test_small_classes_sampled_with_replacement():
    labels = np.array([0, 1, 1, 2, 2, 2, 2, 2])
    batch = next(iter(MPerClassSampler(labels, m=4, batch_size=12)))
    assert sorted(labels[batch].tolist()) == [0] * 4 + [1] * 4 + [2] * 4
    assert set(np.array(batch)[labels[batch] == 1]) == {1, 2}  # cycled, both used


def test_determinism_and_epochs():
    labels = long_tail()
    a = MPerClassSampler(labels, m=2, batch_size=20, seed=7)
    b = MPerClassSampler(labels, m=2, batch_size=20, seed=7)
    assert list(a) == list(b) == list(a)
    first = list(a)
    a.set_epoch(1)
    assert list(a) != first
    b.set_epoch(1)
    assert list(a) == list(b)
    assert list(MPerClassSampler(labels, m=2, batch_size=20, seed=8)) != first


def test_epoch_covers_classes_evenly():
    labels = long_tail(num_classes=30)
    sampler = MPerClassSampler(labels, m=2, batch_size=20, num_batches=45, seed=1)
    picks = labels[np.array(list(sampler))].reshape(-1, 2)[:, 0]
    counts = np.bincount(picks, minlength=30)
    assert counts.min() >= 1 and counts.max() - counts.min() <= 1  # 450 picks / 30 = 15


def test_class_balanced_sampler():
    labels = np.array([0] * 1000 + [1] * 10 + [2])
    sampler = ClassBalancedSampler(labels, batch_size=30, num_batches=20, seed=0)
    assert len(sampler) == 20
    batches = list(sampler)
    counts = np.bincount(labels[np.array(batches).reshape(-1)])
    assert counts.tolist() == [200, 200, 200]
    assert len(set(np.array(batches).reshape(-1)[labels[np.array(batches).reshape(-1)] == 1]))\
        == 10  # items of a class are cycled through, not just the first
    sampler.set_epoch(2)
    assert list(sampler) != batches
    assert len(ClassBalancedSampler(labels, batch_size=100)) == 11


def test_works_with_dataloader_and_sources():
    src = ArraySource(torch.rand(12, 1, 8, 8), [0, 1, 2] * 4)
    loader = torch.utils.data.DataLoader(src, batch_sampler=MPerClassSampler(src, m=2,
                                                                             batch_size=6))
    images, targets = next(iter(loader))
    assert images.shape == (6, 1, 8, 8) and sorted(targets.tolist()) == [0, 0, 1, 1, 2, 2]


def test_sampler_errors():
    labels = np.arange(10).repeat(3)
    with pytest.raises(ConfigError, match="multiple"):
        MPerClassSampler(labels, m=3, batch_size=10)
    with pytest.raises(ConfigError, match="only 10 classes"):
        MPerClassSampler(labels, m=2, batch_size=22)
    with pytest.raises(ConfigError, match="m must"):
        MPerClassSampler(labels, m=0, batch_size=10)
    with pytest.raises(ConfigError, match="num_batches"):
        ClassBalancedSampler(labels, batch_size=10, num_batches=0)
    with pytest.raises(EmptyClassError):
        ClassBalancedSampler([], batch_size=4)
    with pytest.raises(InvalidInputError):
        MPerClassSampler(np.zeros((4, 2)), m=1, batch_size=1)


def test_million_labels_is_fast():
    import time

    labels = np.random.default_rng(0).integers(0, 100_000, 1_000_000)
    start = time.perf_counter()
    sampler = MPerClassSampler(labels, m=4, batch_size=256)
    batches = list(sampler)
    assert len(batches) == 3907 and time.perf_counter() - start < 5


def test_class_weights():
    w = class_weights(np.array([0] * 100 + [1] * 10 + [2]), beta=0.99)
    assert w.dtype == torch.float32 and w.shape == (3,)
    assert torch.isclose(w.mean(), torch.tensor(1.0)) and w[0] < w[1] < w[2]
    n = torch.tensor([100.0, 10.0, 1.0])
    expected = (1 - 0.99) / (1 - 0.99**n)
    assert torch.allclose(w, expected / expected.mean())
    assert torch.allclose(class_weights([0, 0, 1], beta=0.0), torch.ones(2))
    gap = class_weights([0, 2], num_classes=4)
    assert gap.tolist() == [1.0, 0.0, 1.0, 0.0]
    with pytest.raises(ConfigError):
        class_weights([0, 1], beta=1.0)
    with pytest.raises(InvalidInputError):
        class_weights([0.5, 1.0])
