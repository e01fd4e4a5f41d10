"""Turn any image (file, PIL image, array, tensor) into encoder input.

Every image goes through the same steps: grayscale (transparency composited on
white), pad to a square with the background colour (the median of the border
pixels), resize to ``size x size`` (bilinear with antialiasing, the PIL filter,
done by ``torch.nn.functional.interpolate(antialias=True)`` so a batch is one
call), scale to ``[0, 1]`` and, if the border is mostly light (mean > 0.5),
invert so the result is **light ink on a dark background**.

Pass-through: a floating torch tensor already in the canonical layout
``(1, size, size)`` / ``(N, 1, size, size)`` with values in ``[0, 1]`` is assumed
normalised and returned as is (no copy, no polarity flip) so that ready batches
cost nothing. Numpy arrays and other shapes are always normalised.

Value scaling of arrays: bool as 0/1, uint8 / 255, uint16 / 65535; other
dtypes are used as is when within ``[0, 1]``, divided by 255 when within
``[0, 255]``, else min-max rescaled (the range is decided over the whole array).

Example
-------
>>> import numpy as np
>>> to_input(np.full((20, 30), 255, np.uint8)).shape  # white page -> dark
torch.Size([1, 32, 32])
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps

from ..errors import ConfigError, CorruptImageError, EmptyClassError, InvalidInputError

__all__ = ["load_image", "to_input", "to_batch", "decode_image"]

_LUMA = (0.299, 0.587, 0.114)  # ITU-R 601-2, what PIL's convert("L") uses
_CHUNK = 1 << 24  # pixels normalised per interpolate call


def _check_size(size: int) -> int:
    if isinstance(size, bool) or not isinstance(size, int | np.integer) or size < 1:
        raise ConfigError(f"size must be a positive integer, got {size!r}")
    return int(size)


# --------------------------------------------------------------------------- decode
def _pil_to_gray(img: Image.Image) -> torch.Tensor:
    """PIL image -> (H, W) float32 tensor in [0, 1]."""
    mode = img.mode
    if mode.startswith("I;16"):
        return torch.from_numpy(np.asarray(img, dtype=np.float32) / 65535.0)
    if mode in ("I", "F"):
        return _scale(torch.from_numpy(np.asarray(img, dtype=np.float32)))
    if mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in img.info:
        rgba = img.convert("RGBA")
        img = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba)
    if img.mode != "L":
        img = img.convert("L")
    return torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0)


def decode_image(path: str | os.PathLike, *, size: int | None = None) -> torch.Tensor:
    """Decode an image file to an (H, W) float32 grayscale tensor in [0, 1].

    ``size`` lets JPEG decode at a reduced scale (never below ``size``).
    Raises :class:`InvalidInputError` if the file is missing and
    :class:`CorruptImageError` (naming the file) if it cannot be decoded.
    """
    p = Path(path)
    if not p.exists():
        raise InvalidInputError(f"image file not found: {p}")
    if p.is_dir():
        raise InvalidInputError(f"expected an image file, got a directory: {p}")
    try:
        with Image.open(p) as img:
            if size is not None and img.format == "JPEG":
                img.draft("L", (size, size))
            img.load()  # Image.open is lazy: decode now so truncation is caught here
            try:
                ImageOps.exif_transpose(img, in_place=True)
            except Exception:  # noqa: BLE001 - a broken EXIF block only loses rotation
                pass
            return _pil_to_gray(img)
    except Image.DecompressionBombError as exc:
        raise CorruptImageError(f"image too large to decode safely: {p} ({exc})") from exc
    except Exception as exc:  # noqa: BLE001 - PIL raises many types for bad data
        raise CorruptImageError(f"cannot decode image {p}: {exc}") from exc


# --------------------------------------------------------------------------- arrays
def _as_tensor(data) -> torch.Tensor:
    if isinstance(data, torch.Tensor):
        return data.detach().cpu()
    arr = np.asarray(data)
    if arr.dtype == np.uint16:
        return torch.from_numpy(arr.astype(np.float32) / 65535.0)
    if arr.dtype.kind not in "biuf":
        raise InvalidInputError(f"image arrays must be numeric, got dtype {arr.dtype}")
    if not arr.flags.writeable or not arr.flags.c_contiguous:
        arr = np.array(arr)
    return torch.from_numpy(arr)


def _scale(x: torch.Tensor) -> torch.Tensor:
    """Numeric tensor -> float32 in [0, 1] (rules in the module docstring)."""
    if x.dtype == torch.bool:
        return x.float()
    if x.dtype == torch.uint8:
        return x.float() / 255.0
    if x.dtype == getattr(torch, "uint16", None):
        return x.float() / 65535.0
    if x.is_complex():
        raise InvalidInputError("image arrays must be real-valued")
    if x.numel() == 0:
        raise InvalidInputError(f"empty image array of shape {tuple(x.shape)}")
    x = x.float() if x.dtype != torch.float32 else x
    if not torch.isfinite(x).all():
        raise InvalidInputError("image array contains NaN or inf")
    lo, hi = float(x.min()), float(x.max())
    if lo >= 0.0 and hi <= 1.0:
        return x
    if lo >= 0.0 and hi <= 255.0:
        return x / 255.0
    return (x - lo) / (hi - lo) if hi > lo else torch.zeros_like(x)


def _to_gray(x: torch.Tensor, channel_dim: int) -> torch.Tensor:
    """Drop the channel axis of a [0, 1] tensor: 1=L, 2=LA, 3=RGB, 4=RGBA."""
    c = x.shape[channel_dim]
    ch = x.unbind(channel_dim)
    if c in (1, 2):
        gray = ch[0]
    elif c in (3, 4):
        gray = _LUMA[0] * ch[0] + _LUMA[1] * ch[1] + _LUMA[2] * ch[2]
    else:
        raise InvalidInputError(f"unsupported number of channels: {c} (expected 1-4)")
    if c in (2, 4):  # composite on white
        alpha = ch[-1]
        gray = gray * alpha + (1.0 - alpha)
    return gray


def _normalise(x: torch.Tensor, size: int) -> torch.Tensor:
    """(N, H, W) float in [0, 1] -> (N, 1, size, size), light ink on dark."""
    n, h, w = x.shape
    if h == 0 or w == 0:
        raise InvalidInputError(f"image has zero height or width: {(h, w)}")
    step = max(1, _CHUNK // (max(h, w) ** 2))
    if n > step:
        return torch.cat([_normalise(x[i : i + step], size) for i in range(0, n, step)])
    border = torch.cat([x[:, 0, :], x[:, -1, :], x[:, :, 0], x[:, :, -1]], dim=1)
    flip = border.mean(dim=1) > 0.5
    s = max(h, w)
    if h != w:
        bg = border.median(dim=1).values
        out = bg.view(n, 1, 1).expand(n, s, s).clone()
        top, left = (s - h) // 2, (s - w) // 2
        out[:, top : top + h, left : left + w] = x
        x = out
    x = x.unsqueeze(1)
    if s != size:
        x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True,
                          align_corners=False)
    x = torch.where(flip.view(n, 1, 1, 1), 1.0 - x, x)
    return x.clamp_(0.0, 1.0).contiguous()


def _is_ready(x: torch.Tensor, size: int) -> bool:
    return (x.is_floating_point() and x.ndim in (3, 4) and x.shape[-3:] == (1, size, size)
            and x.numel() > 0 and bool(x.min() >= 0) and bool(x.max() <= 1))


def _array_to_gray(x: torch.Tensor, *, channels_last: bool) -> torch.Tensor:
    """A single image tensor (H,W) / (H,W,C) / (C,H,W) -> (H, W) in [0, 1]."""
    if x.ndim == 2:
        return _scale(x)
    if x.ndim != 3:
        raise InvalidInputError(
            f"an image must have 2 or 3 dimensions, got shape {tuple(x.shape)}")
    first, last = x.shape[0] in (1, 2, 3, 4), x.shape[-1] in (1, 2, 3, 4)
    if not (first or last):
        raise InvalidInputError(f"cannot find the channel axis of shape {tuple(x.shape)}")
    dim = -1 if (last and (channels_last or not first)) else 0
    return _to_gray(_scale(x), dim)


# --------------------------------------------------------------------------- public
def load_image(path: str | os.PathLike, *, size: int = 32) -> torch.Tensor:
    """Read an image file (any format PIL opens) as a (1, size, size) float32 tensor.

    Example
    -------
    >>> load_image("digit.png", size=28).shape  # doctest: +SKIP
    torch.Size([1, 28, 28])
    """
    size = _check_size(size)
    return _normalise(decode_image(path, size=size).unsqueeze(0), size)[0]


def to_input(image, *, size: int = 32) -> torch.Tensor:
    """Normalise one image (PIL image, numpy array, tensor or path) to (1, size, size).

    Numpy arrays are (H, W) or channels-last (H, W, C); tensors (H, W) or
    channels-first (C, H, W). C may be 1 (L), 2 (LA), 3 (RGB) or 4 (RGBA).

    Example
    -------
    >>> to_input(torch.rand(3, 40, 20), size=16).shape
    torch.Size([1, 16, 16])
    """
    size = _check_size(size)
    if isinstance(image, str | os.PathLike):
        return load_image(image, size=size)
    if isinstance(image, Image.Image):
        return _normalise(_pil_to_gray(image).unsqueeze(0), size)[0]
    if isinstance(image, torch.Tensor) and _is_ready(image, size) and image.ndim == 3:
        return image.float()
    x = _as_tensor(image)
    gray = _array_to_gray(x, channels_last=not isinstance(image, torch.Tensor))
    return _normalise(gray.unsqueeze(0), size)[0]


def _stack_to_gray(x: torch.Tensor) -> torch.Tensor:
    """(N,H,W) / (N,1,H,W) / (N,C,H,W) / (N,H,W,C) -> (N, H, W) in [0, 1]."""
    if x.ndim == 3:
        return _scale(x)
    if x.ndim != 4:
        raise InvalidInputError(
            f"a batch must have 2, 3 or 4 dimensions, got shape {tuple(x.shape)}")
    if x.shape[1] == 1:
        return _scale(x[:, 0])
    if x.shape[-1] in (1, 2, 3, 4):
        return _to_gray(_scale(x), -1)
    if x.shape[1] in (2, 3, 4):
        return _to_gray(_scale(x), 1)
    raise InvalidInputError(f"cannot find the channel axis of shape {tuple(x.shape)}")


def to_batch(samples, *, size: int = 32) -> torch.Tensor:
    """Normalise many images to an (N, 1, size, size) float32 batch.

    ``samples`` is a tensor or numpy array (2-D: one image; 3-D: ``(N, H, W)``;
    4-D: ``(N, 1, H, W)``, ``(N, H, W, C)`` or ``(N, C, H, W)``), a path, or a
    list / tuple of single images (paths, PIL images, arrays, tensors; mixed ok).
    A ready float tensor ``(N, 1, size, size)`` in [0, 1] is returned unchanged.
    To pass a single colour array use :func:`to_input` or wrap it in a list.

    Example
    -------
    >>> to_batch([np.zeros((28, 28), np.uint8), torch.rand(1, 32, 32)]).shape
    torch.Size([2, 1, 32, 32])
    """
    size = _check_size(size)
    if isinstance(samples, str | os.PathLike | Image.Image):
        return to_input(samples, size=size).unsqueeze(0)
    if isinstance(samples, torch.Tensor | np.ndarray):
        if samples.ndim >= 3 and samples.shape[0] == 0:
            raise EmptyClassError("no images: the batch is empty")
        if isinstance(samples, torch.Tensor) and samples.ndim == 4 and _is_ready(samples, size):
            return samples.float()
        x = _as_tensor(samples)
        if x.ndim == 2:
            return _normalise(_scale(x).unsqueeze(0), size)
        return _normalise(_stack_to_gray(x), size)
    if hasattr(samples, "__iter__"):
        items = list(samples)
        if not items:
            raise EmptyClassError("no images: the sample list is empty")
        return torch.stack([to_input(item, size=size) for item in items])
    raise InvalidInputError(f"cannot read images from {type(samples).__name__}")
