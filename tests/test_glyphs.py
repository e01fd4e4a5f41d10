"""Tests of the procedural glyph source (megaclass.data.glyphs)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from megaclass.data.base import Source
from megaclass.data.glyphs import GlyphSource, render_glyphs
from megaclass.errors import ConfigError, EmptyClassError, InvalidInputError, MegaclassError


def _ink(img) -> np.ndarray:
    """Noise-free-ish stroke mask, for comparing shapes rather than pixels."""
    return np.asarray(img).reshape(-1) > 0.5


def test_shape_dtype_range_and_polarity():
    imgs = render_glyphs(np.arange(64), np.arange(64), seed=3)
    assert imgs.shape == (64, 32, 32) and imgs.dtype == np.float32
    assert imgs.min() >= 0.0 and imgs.max() <= 1.0
    # light ink on a dark background: mostly dark, every image has some bright strokes
    assert np.median(imgs) < 0.15
    assert (imgs.reshape(64, -1).max(axis=1) > 0.7).all()
    assert ((imgs > 0.5).mean(axis=(1, 2)) > 0.02).all()


def test_deterministic_and_independent_of_batch_composition():
    a = render_glyphs([5, 9, 123], [0, 4, 2], seed=7)
    b = render_glyphs([5, 9, 123], [0, 4, 2], seed=7)
    np.testing.assert_array_equal(a, b)
    mixed = render_glyphs([77, 123, 1, 9, 5], [1, 2, 0, 4, 0], seed=7)
    np.testing.assert_array_equal(mixed[[4, 3, 1]], a)
    single = render_glyphs([9], [4], seed=7)
    np.testing.assert_array_equal(single[0], a[1])


def test_samples_getitem_and_batch_agree():
    src = GlyphSource([40, 41, 42], samples_per_class=4, seed=11)
    img, label = src[6]  # class index 1 (id 41), drawing 2
    assert label == 1 and img.shape == (1, 32, 32) and img.dtype == torch.float32
    s = GlyphSource.samples(41, 4, seed=11)
    assert s.shape == (4, 1, 32, 32)
    torch.testing.assert_close(img, s[2], rtol=0, atol=0)
    torch.testing.assert_close(GlyphSource.samples(41, 2, seed=11, start=2), s[2:], rtol=0, atol=0)
    imgs, ids = GlyphSource.batch([42, 40], 3, seed=11)
    assert imgs.shape == (6, 1, 32, 32) and ids.dtype == np.int64
    assert ids.tolist() == [42, 42, 42, 40, 40, 40]
    torch.testing.assert_close(imgs[1], src[9][0], rtol=0, atol=0)
    torch.testing.assert_close(imgs[3], src[0][0], rtol=0, atol=0)
    items = src.__getitems__([6, 0, 11])
    assert [lab for _, lab in items] == [1, 0, 2]
    torch.testing.assert_close(items[0][0], img, rtol=0, atol=0)
    torch.testing.assert_close(src[-1][0], items[2][0], rtol=0, atol=0)


def test_index_and_seed_change_the_drawing_but_not_the_character():
    base = render_glyphs([1000] * 4, [0, 1, 0, 2], seed=0)
    other_seed = render_glyphs([1000], [0], seed=1)[0]
    assert not np.allclose(base[0], base[1])
    assert not np.allclose(base[0], other_seed)
    # drawings of one class overlap far more than drawings of different classes
    same = render_glyphs([1000] * 8, np.arange(8), seed=5).reshape(8, -1)
    others = render_glyphs(np.arange(2000, 2008), np.zeros(8, int), seed=5).reshape(8, -1)
    ref = render_glyphs([1000] * 8, np.arange(100, 108), seed=6).reshape(8, -1).mean(0)

    def cos(x):
        return (x @ ref) / (np.linalg.norm(x, axis=1) * np.linalg.norm(ref))

    assert cos(same).mean() > cos(others).mean() + 0.15


def test_class_shape_independent_of_seed_and_classes_distinct():
    # averaged over many drawings, one class looks the same in every seed stream
    a = render_glyphs([31] * 64, np.arange(64), seed=0).mean(0).ravel()
    b = render_glyphs([31] * 64, np.arange(64), seed=99).mean(0).ravel()
    c = render_glyphs([32] * 64, np.arange(64), seed=0).mean(0).ravel()
    cos = lambda x, y: x @ y / np.linalg.norm(x) / np.linalg.norm(y)  # noqa: E731
    assert cos(a, b) > 0.95 and cos(a, b) > cos(a, c) + 0.1
    shapes = render_glyphs(np.arange(50), np.zeros(50, int), seed=0)
    assert len({_ink(s).tobytes() for s in shapes}) == 50


def test_large_ids_and_configurable_size():
    ids = [0, 9_999_999, 2**31 - 1]
    imgs = render_glyphs(ids, [0, 0, 0], size=48, seed=2)
    assert imgs.shape == (3, 48, 48) and np.isfinite(imgs).all()
    assert not np.allclose(imgs[0], imgs[1])
    src = GlyphSource([9_999_999], samples_per_class=2, size=48)
    assert src[1][0].shape == (1, 48, 48)
    assert GlyphSource.samples(9_999_999, 2, size=48).shape == (2, 1, 48, 48)
    assert render_glyphs([], [], size=16).shape == (0, 16, 16)


def test_source_protocol_labels_names_and_epochs():
    src = GlyphSource(5, samples_per_class=3, seed=4)
    assert isinstance(src, Source)
    assert len(src) == 15 and src.num_classes == 5 and src.size == 32
    assert src.class_ids.dtype == np.int64 and src.class_ids.tolist() == [0, 1, 2, 3, 4]
    assert src.class_names == [f"glyph-{i}" for i in range(5)]
    assert src.labels.dtype == np.int64 and src.labels.tolist() == np.repeat(range(5), 3).tolist()
    assert GlyphSource([7, 3], samples_per_class=1).class_names == ["glyph-7", "glyph-3"]
    assert GlyphSource(range(10, 20, 5)).class_ids.tolist() == [10, 15]
    first, lab = src[4]
    src.set_epoch(2)
    again, lab2 = src[4]
    assert lab == lab2 == 1 and not torch.equal(first, again)
    expected = GlyphSource.samples(1, 1, seed=4, start=2 * 3 + 1)[0]
    torch.testing.assert_close(again, expected, rtol=0, atol=0)
    with pytest.raises(IndexError):
        src[15]
    with pytest.raises(IndexError):
        src[-16]


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"classes": []}, EmptyClassError),
        ({"classes": 0}, EmptyClassError),
        ({"classes": [1, 1]}, ConfigError),
        ({"classes": [-1, 2]}, ConfigError),
        ({"classes": [2**31]}, ConfigError),
        ({"classes": ["a"]}, ConfigError),
        ({"classes": 3.5}, ConfigError),
        ({"samples_per_class": 0}, ConfigError),
        ({"size": 7}, ConfigError),
        ({"seed": "x"}, ConfigError),
    ],
)
def test_bad_source_arguments(kwargs, error):
    with pytest.raises(error) as info:
        GlyphSource(**kwargs)
    assert isinstance(info.value, MegaclassError) and str(info.value)


def test_bad_render_arguments():
    with pytest.raises(InvalidInputError):
        render_glyphs([1, 2], [0])
    with pytest.raises(InvalidInputError):
        render_glyphs([-1], [0])
    with pytest.raises(InvalidInputError):
        render_glyphs([1], [-3])
    with pytest.raises(InvalidInputError):
        render_glyphs([1.5], [0])
    with pytest.raises(ConfigError):
        render_glyphs([1], [0], size=4)
    with pytest.raises(ConfigError):
        GlyphSource.samples(1, 0)
    with pytest.raises(ConfigError):
        GlyphSource.batch([1], 2, start=-1)
    with pytest.raises(InvalidInputError):
        GlyphSource.batch([2**31], 1)
    with pytest.raises(ConfigError):
        GlyphSource(3).set_epoch(-1)


def test_dataloader_batches():
    src = GlyphSource(10, samples_per_class=4, size=24)
    loader = torch.utils.data.DataLoader(src, batch_size=16, shuffle=True, num_workers=0)
    batches = list(loader)
    assert len(batches) == 3
    x, y = batches[0]
    assert x.shape == (16, 1, 24, 24) and x.dtype == torch.float32
    assert y.shape == (16,) and y.dtype == torch.int64 and int(y.max()) < 10
    assert sum(len(b[1]) for b in batches) == 40
    ordered = next(iter(torch.utils.data.DataLoader(src, batch_size=8)))
    torch.testing.assert_close(ordered[0][5], src[5][0], rtol=0, atol=0)
    assert ordered[1].tolist() == src.labels[:8].tolist()
