"""Image normalisation, ImageFolderSource and ArraySource."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from megaclass.data.arrays import ArraySource, encode_labels
from megaclass.data.base import Source
from megaclass.data.folder import ImageFolderSource
from megaclass.data.images import load_image, to_batch, to_input
from megaclass.errors import (
    ConfigError,
    CorruptImageError,
    EmptyClassError,
    InvalidInputError,
)


def glyph(h: int = 40, w: int = 40, *, dark_on_light: bool = False) -> np.ndarray:
    """A uint8 (h, w) image: a bar in the middle, ink light on dark by default."""
    a = np.zeros((h, w), np.uint8)
    a[h // 4 : 3 * h // 4, w // 2 - 3 : w // 2 + 3] = 255
    return 255 - a if dark_on_light else a


def save(path, array, mode: str = "L", fmt: str | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.fromarray(array)
    if mode != "L":
        img = img.convert(mode)
    img.save(path, format=fmt)


def assert_light_on_dark(x: torch.Tensor) -> None:
    assert x.dtype == torch.float32 and x.min() >= 0 and x.max() <= 1
    border = torch.cat([x[..., 0, :], x[..., -1, :], x[..., :, 0], x[..., :, -1]], dim=-1)
    assert border.mean() < 0.1
    assert x[..., x.shape[-2] // 2, x.shape[-1] // 2].min() > 0.6  # the bar is lit


# ------------------------------------------------------------------ images.py
@pytest.mark.parametrize(("fmt", "mode", "dark"), [
    ("png", "L", False), ("png", "RGB", True), ("jpg", "RGB", True), ("jpg", "L", False),
    ("bmp", "L", True), ("gif", "L", False), ("tiff", "RGB", False), ("webp", "RGB", True),
])
def test_load_image_formats_and_polarity(tmp_path, fmt, mode, dark):
    path = tmp_path / f"img.{fmt}"
    save(path, glyph(50, 30, dark_on_light=dark), mode)
    x = load_image(path, size=24)
    assert x.shape == (1, 24, 24)
    assert_light_on_dark(x)


def test_rgba_composited_on_white_then_inverted(tmp_path):
    rgba = np.zeros((20, 20, 4), np.uint8)  # fully transparent except an opaque black bar
    rgba[5:15, 8:12] = (0, 0, 0, 255)
    path = tmp_path / "a.png"
    Image.fromarray(rgba, "RGBA").save(path)
    assert_light_on_dark(load_image(path, size=16))


def test_to_input_kinds_agree():
    a = glyph(28, 28)
    ref = to_input(a, size=32)
    assert ref.shape == (1, 32, 32)
    for other in (Image.fromarray(a), torch.from_numpy(a), a.astype(np.float32) / 255,
                  np.repeat(a[:, :, None], 3, axis=2), torch.from_numpy(a)[None].repeat(3, 1, 1)):
        assert torch.allclose(to_input(other, size=32), ref, atol=1e-5)
    assert_light_on_dark(to_input(glyph(28, 28, dark_on_light=True), size=32))
    assert to_input(np.full((5, 5), 300.0)).max() == 0  # constant, out of range: no NaN
    assert_light_on_dark(to_input(glyph().astype(np.int64) * 4 - 100))  # min-max rescaled


def test_pad_to_square_keeps_aspect():
    x = to_input(glyph(60, 20), size=30)  # tall bar, padded left/right with black
    assert x.shape == (1, 30, 30)
    assert x[0, :, :8].max() < 0.05 and x[0, :, -8:].max() < 0.05


def test_ready_tensor_passes_through():
    ready = torch.rand(5, 1, 32, 32)
    assert to_batch(ready, size=32) is ready
    one = torch.ones(1, 32, 32)  # a white square would be flipped if normalised
    assert to_input(one, size=32) is one
    assert to_batch(np.ones((2, 1, 32, 32), np.float32)).max() == 0  # numpy is normalised


def test_to_batch_mixed_inputs(tmp_path):
    path = tmp_path / "x.jpg"
    save(path, glyph(64, 48, dark_on_light=True), "RGB")
    batch = to_batch([path, str(path), Image.fromarray(glyph()), glyph(10, 12),
                      torch.rand(1, 7, 7), np.random.rand(9, 9, 3)], size=16)
    assert batch.shape == (6, 1, 16, 16) and batch.dtype == torch.float32
    assert to_batch(path, size=16).shape == (1, 1, 16, 16)
    stack = np.stack([glyph(), glyph(dark_on_light=True)])
    for arr in (stack, stack[:, None], np.repeat(stack[..., None], 3, axis=3)):
        out = to_batch(arr, size=20)
        assert out.shape == (2, 1, 20, 20)
        assert torch.allclose(out[0], out[1], atol=1e-5)  # polarity decided per image


def test_image_errors(tmp_path):
    with pytest.raises(EmptyClassError):
        to_batch([])
    with pytest.raises(InvalidInputError, match="NaN"):
        to_input(np.full((8, 8), np.nan))
    with pytest.raises(InvalidInputError, match="NaN"):
        to_batch(torch.tensor([[[float("inf")]]]).expand(2, 4, 4))
    with pytest.raises(InvalidInputError, match="dimensions"):
        to_input(np.zeros((2, 3, 4, 5)))
    with pytest.raises(InvalidInputError, match="dimensions"):
        to_batch(np.zeros(5))
    with pytest.raises(InvalidInputError, match="missing.png"):
        load_image(tmp_path / "missing.png")
    with pytest.raises(ConfigError):
        to_input(glyph(), size=0)
    bad = tmp_path / "noise.png"
    bad.write_bytes(np.random.default_rng(0).bytes(300))
    with pytest.raises(CorruptImageError, match="noise.png"):
        load_image(bad)


# ------------------------------------------------------------------ folder.py
def make_flat(root):
    save(root / "cat" / "1.png", glyph())
    save(root / "cat" / "2.jpg", glyph(30, 50, dark_on_light=True), "RGB")
    save(root / "ant" / "a.bmp", glyph(20, 20))
    save(root / "ant" / ".hidden.png", glyph())
    save(root / ".cache" / "x.png", glyph())
    (root / "ant" / "notes.txt").write_text("not an image")
    return root


def test_flat_folder(tmp_path):
    src = ImageFolderSource(make_flat(tmp_path / "data"), size=20)
    assert isinstance(src, Source)
    assert src.class_names == ["ant", "cat"] and src.num_classes == 2
    assert src.labels.dtype == np.int64 and src.labels.tolist() == [0, 1, 1]
    assert [p.name for p in src.paths] == ["a.bmp", "1.png", "2.jpg"]
    assert len(src) == 3
    for i in range(len(src)):
        x, label = src[i]
        assert x.shape == (1, 20, 20) and label == src.labels[i]
        assert_light_on_dark(x)
    with pytest.raises(IndexError):
        src[3]
    classes = dict(src.iter_classes())
    assert list(classes) == ["ant", "cat"] and classes["cat"].shape == (2, 1, 20, 20)


def test_nested_folder_and_stray_files(tmp_path):
    root = tmp_path / "data"
    save(root / "birds" / "parrot" / "p.png", glyph())
    save(root / "birds" / "owl" / "o.png", glyph())
    save(root / "birds" / "b.png", glyph())
    save(root / "fish" / "f.gif", glyph())
    save(root / "stray.png", glyph())
    with pytest.warns(UserWarning, match="directly in"):
        src = ImageFolderSource(root, size=8)
    assert src.class_names == ["birds", "birds/owl", "birds/parrot", "fish"]
    assert len(src) == 4 and src.labels.tolist() == [0, 1, 2, 3]
    assert src.class_paths(2)[0].name == "p.png"


def test_min_samples_and_extensions(tmp_path):
    root = make_flat(tmp_path / "data")
    src = ImageFolderSource(root, min_samples=2)
    assert src.class_names == ["cat"] and src.skipped_classes == ["ant"]
    assert ImageFolderSource(root, extensions=[".BMP"]).class_names == ["ant"]
    with pytest.raises(EmptyClassError):
        ImageFolderSource(root, min_samples=5)
    with pytest.raises(ConfigError):
        ImageFolderSource(root, min_samples=0)


def test_folder_errors(tmp_path):
    with pytest.raises(InvalidInputError, match="not found"):
        ImageFolderSource(tmp_path / "nope")
    (tmp_path / "empty" / "cls").mkdir(parents=True)
    with pytest.raises(EmptyClassError, match="no class folders"):
        ImageFolderSource(tmp_path / "empty")
    save(tmp_path / "flat" / "x.png", glyph())
    with pytest.raises(EmptyClassError, match="directly in it"):
        ImageFolderSource(tmp_path / "flat")


@pytest.mark.parametrize("kind", ["noise.png", "cut.jpg"])
def test_corrupt_file_named(tmp_path, kind):
    root = make_flat(tmp_path / "data")
    bad = root / "cat" / kind
    if kind.endswith(".png"):
        bad.write_bytes(np.random.default_rng(1).bytes(500))
    else:
        buf = io.BytesIO()
        Image.fromarray(np.random.default_rng(2).integers(0, 255, (64, 64, 3), np.uint8)).save(
            buf, "JPEG")
        bad.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    with pytest.raises(CorruptImageError, match=kind):
        ImageFolderSource(root)
    lazy = ImageFolderSource(root, verify=False)  # found when read instead
    with pytest.raises(CorruptImageError, match=kind):
        lazy[lazy.paths.index(bad)]


# ------------------------------------------------------------------ arrays.py
def test_array_source_string_labels():
    images = np.stack([glyph(28, 28), glyph(28, 28, dark_on_light=True), glyph(28, 28)])
    src = ArraySource(images, ["zebra", "ant", "zebra"])
    assert isinstance(src, Source)
    assert src.size == 28 and src.class_names == ["ant", "zebra"]
    assert src.labels.tolist() == [1, 0, 1] and src.labels.dtype == np.int64
    x, label = src[1]
    assert x.shape == (1, 28, 28) and label == 0
    assert_light_on_dark(x)


def test_array_source_layouts_and_names():
    rgb = np.random.default_rng(0).integers(0, 255, (4, 10, 12, 3), np.uint8)
    src = ArraySource(rgb, torch.tensor([3, 1, 3, 10]), size=16)
    assert src.images.shape == (4, 1, 16, 16) and src.class_names == ["1", "3", "10"]
    named = ArraySource(torch.rand(3, 1, 8, 8), [0, 2, 2], class_names=["a", "b", "c"])
    assert named.num_classes == 3 and named.labels.tolist() == [0, 2, 2]
    assert encode_labels([(1, "a"), (0, "b"), (1, "a")])[1] == ["(0, 'b')", "(1, 'a')"]


def test_array_source_errors():
    with pytest.raises(InvalidInputError, match="labels"):
        ArraySource(np.zeros((3, 8, 8)), [0, 1])
    with pytest.raises(EmptyClassError):
        ArraySource(np.zeros((0, 8, 8)), [])
    with pytest.raises(InvalidInputError, match="NaN"):
        ArraySource(np.full((2, 8, 8), np.inf), [0, 1])
    with pytest.raises(InvalidInputError, match="mix"):
        ArraySource(np.zeros((2, 8, 8)), [0, "a"])
    with pytest.raises(InvalidInputError, match="class_names"):
        ArraySource(np.zeros((2, 8, 8)), [0, 5], class_names=["a", "b"])
