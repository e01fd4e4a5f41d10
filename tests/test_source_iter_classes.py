"""Source.iter_classes: every source streams (class name, its images), ready for enroll_many."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from megaclass.data import ArraySource, GlyphSource, ImageFolderSource, Source, open_source
from megaclass.errors import ConfigError


def _items_by_class(src) -> dict[str, torch.Tensor]:
    """The same grouping built from item access: what iter_classes must equal."""
    out: dict[str, list] = {}
    for i in range(len(src)):
        x, label = src[i]
        out.setdefault(src.class_names[label], []).append(x)
    return {k: torch.stack(v) for k, v in out.items()}


def _check(src, atol: float = 0.0) -> list[str]:
    assert isinstance(src, Source)
    got = list(src.iter_classes())
    want = _items_by_class(src)
    assert [name for name, _ in got] == [n for n in src.class_names if n in want]
    for name, images in got:
        assert images.shape == want[name].shape, name
        assert torch.allclose(images, want[name], rtol=0, atol=atol), name
    return [name for name, _ in got]


def test_glyph_source_renders_in_chunks_the_items_of_each_class():
    src = GlyphSource([5, 3, 40, 7, 11], samples_per_class=3, size=24, seed=2)
    src.set_epoch(1)
    assert _check(src) == ["glyph-5", "glyph-3", "glyph-40", "glyph-7", "glyph-11"]
    chunked = [(n, x) for n, x in src.iter_classes(chunk=2)]
    assert all(torch.equal(x, y) for (_, x), (_, y) in zip(chunked, src.iter_classes(), strict=True))
    colour = GlyphSource(range(3), samples_per_class=2, channels=3)
    assert next(colour.iter_classes())[1].shape == (2, 3, 32, 32)
    with pytest.raises(ConfigError, match="chunk"):
        next(src.iter_classes(chunk=0))


def test_array_source_groups_by_label_and_skips_empty_classes():
    images = torch.rand(7, 1, 8, 8)
    src = ArraySource(images, [2, 0, 2, 0, 0, 2, 2], class_names=["a", "empty", "c"])
    assert _check(src) == ["a", "c"]
    (_, a), (_, c) = src.iter_classes()
    assert torch.equal(a, src.images[[1, 3, 4]]) and torch.equal(c, src.images[[0, 2, 5, 6]])


def test_folder_source_and_open_source_give_one_enroll_path(tmp_path):
    rng = np.random.default_rng(0)
    for name, n in (("cat", 2), ("dog", 3)):
        (tmp_path / name).mkdir()
        for i in range(n):
            Image.fromarray(rng.integers(0, 255, (20, 20), dtype=np.uint8)).save(tmp_path / name / f"{i}.png")
    folder = open_source(str(tmp_path), size=16)
    # items come through the uint8 decode cache, iter_classes decodes the files: 1/255 apart at most
    assert isinstance(folder, ImageFolderSource) and _check(folder, atol=1 / 255 + 1e-6) == ["cat", "dog"]
    glyphs = open_source("glyphs:10-13", size=16, samples_per_class=2)
    assert _check(glyphs) == ["glyph-10", "glyph-11", "glyph-12"]


def test_enroll_many_takes_iter_classes(tmp_path):
    from megaclass import Gallery, Recognizer
    from megaclass.models import Encoder, EncoderConfig

    encoder = Encoder(EncoderConfig(dim=16, widths=(8, 16))).eval()
    src = GlyphSource(range(100, 106), samples_per_class=2, size=encoder.input_size)
    with Recognizer(encoder, Gallery.open(tmp_path / "g", dim=encoder.dim)) as rec:
        assert rec.enroll_many(src.iter_classes()) == 12
        assert sorted(rec.gallery.labels()) == sorted(src.class_names)
