"""Turn any image (file, PIL image, array, tensor) into encoder input, by the model's contract.

The contract is an :class:`~megaclass.data.input_spec.InputSpec` (a model's
``encoder.input_spec``; ``size=`` alone means the 1-channel handwriting contract).
Every image goes through the same steps:

1. **channels**: 1-channel models get the luma (ITU-R 601-2, what PIL's
   ``convert("L")`` uses); 3-channel models get RGB (a grayscale image is repeated
   on the three channels). Transparency is composited on white.
2. **shrink before anything else**: a large image is reduced by an integer box
   filter (PIL ``Image.reduce``; JPEGs decode at a reduced scale with ``draft``)
   to about twice the model's size, so the work per image is bounded by its
   decoded pixels and never by a padded square of its longest side.
3. **square**: ``pad`` scales the longer side to ``size`` and pads with the
   border's median colour; ``crop`` cuts the centre square and scales it to
   ``size``; ``stretch`` scales each side to ``size`` (bilinear with
   antialiasing, ``torch.nn.functional.interpolate(antialias=True)``).
4. **polarity**: with ``polarity="auto"`` (handwriting) an image whose border is
   mostly light (mean luma > 0.5) is inverted so that ink is **light on dark**;
   ``"none"`` (the photo default) keeps it as it is.

Values are float32 in ``[0, 1]``; the model applies its own ``mean``/``std``.

Pass-through: a floating tensor already in the contract's layout ``(C, size, size)``
/ ``(N, C, size, size)`` with values in ``[0, 1]`` is returned as is (no copy, no
polarity flip) so that ready batches cost nothing. Numpy arrays and other shapes are
always converted.

Value scaling of arrays: bool as 0/1, uint8 / 255, uint16 / 65535; other dtypes are
used as is when within ``[0, 1]``, divided by 255 when within ``[0, 255]``, else
min-max rescaled (the range is decided over the whole array).

Untrusted files: :func:`open_image` reads the size from the header and refuses an
image over ``max_pixels`` or ``max_side`` *before* decoding it
(:class:`~megaclass.errors.ImageTooLargeError`).

Example
-------
>>> import numpy as np
>>> to_input(np.full((20, 30), 255, np.uint8)).shape  # white page -> dark
torch.Size([1, 32, 32])
>>> to_batch([np.zeros((48, 64, 3), np.uint8)], spec=InputSpec.preset("photo", size=16)).shape
torch.Size([1, 3, 16, 16])
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps

from ..errors import (
    ConfigError,
    CorruptImageError,
    EmptyClassError,
    ImageTooLargeError,
    InvalidInputError,
    MegaclassError,
)
from .input_spec import InputSpec

__all__ = ["InputSpec", "load_image", "to_input", "to_batch", "decode_image", "open_image", "as_spec"]

_LUMA = (0.299, 0.587, 0.114)  # ITU-R 601-2, what PIL's convert("L") uses
_CHUNK = 1 << 24  # values converted per interpolate call
_SHRINK_TO = 2  # large images are box-reduced to about this many times the model size


def _check_size(size: int) -> int:
    if isinstance(size, bool) or not isinstance(size, int | np.integer) or size < 1:
        raise ConfigError(f"size must be a positive integer, got {size!r}")
    return int(size)


def as_spec(size: int | None = None, spec: InputSpec | None = None) -> InputSpec:
    """The contract to convert by: ``spec`` (its size replaced by ``size`` when given),
    else the 1-channel handwriting contract at ``size`` (default 32)."""
    if spec is None:
        return InputSpec(size=_check_size(32 if size is None else size))
    if not isinstance(spec, InputSpec):
        raise ConfigError(f"spec must be an InputSpec, got {type(spec).__name__}")
    return spec if size is None or size == spec.size else spec.with_(size=_check_size(size))


# --------------------------------------------------------------------------- decode
def _shrink(img: Image.Image, spec: InputSpec) -> Image.Image:
    """Box-reduce a large image to about ``_SHRINK_TO`` x the model size (what step 3 needs)."""
    w, h = img.size
    target = _SHRINK_TO * spec.size
    if spec.resize == "crop" and w != h:  # only the centre square is ever used
        m = min(w, h)
        left, top = (w - m) // 2, (h - m) // 2
        img = img.crop((left, top, left + m, top + m))
        w = h = m
    if spec.resize == "stretch":
        fx, fy = max(1, w // target), max(1, h // target)
    else:
        side = max(w, h) if spec.resize == "pad" else min(w, h)
        fx = fy = max(1, side // target)
    if fx == 1 and fy == 1:
        return img
    if img.mode not in ("L", "LA", "RGB", "RGBA", "I", "F"):
        img = img.convert("RGBA" if _has_alpha(img) else "RGB")
    return img.reduce((fx, fy))


def _has_alpha(img: Image.Image) -> bool:
    return img.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in img.info


def _pil_to_tensor(img: Image.Image, channels: int) -> torch.Tensor:
    """PIL image -> (channels, H, W) float32 tensor in [0, 1]."""
    mode = img.mode
    if mode.startswith("I;16") or mode in ("I", "F"):
        arr = np.asarray(img, dtype=np.float32)
        gray = torch.from_numpy(arr / 65535.0) if mode.startswith("I;16") else _scale(torch.from_numpy(arr))
        return gray.unsqueeze(0).expand(channels, -1, -1).contiguous()
    if _has_alpha(img):
        rgba = img.convert("RGBA")
        img = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba)
    want = "L" if channels == 1 else "RGB"
    if img.mode != want:
        img = img.convert(want)
    pixels = torch.from_numpy(np.array(img, dtype=np.uint8))
    pixels = pixels.unsqueeze(0) if channels == 1 else pixels.permute(2, 0, 1)
    return pixels.float().div_(255.0)


def open_image(source, *, spec: InputSpec | None = None, what: str | None = None,
               max_pixels: int | None = None, max_side: int | None = None) -> Image.Image:
    """Decode an image file (path, bytes or binary file) to a loaded, upright PIL image.

    The size is checked from the header *before* decoding: over ``max_pixels`` pixels or
    ``max_side`` on a side raises :class:`ImageTooLargeError`. With ``spec`` the image is
    decoded at a reduced scale (JPEG) and box-reduced to about twice ``spec.size``, so
    what is kept in memory is small whatever the file's size. ``what`` names the image in
    error messages (default: the path). Undecodable data raises :class:`CorruptImageError`.
    """
    if isinstance(source, str | os.PathLike):
        p = Path(source)
        what = what or str(p)
        if not p.exists():
            raise InvalidInputError(f"image file not found: {p}")
        if p.is_dir():
            raise InvalidInputError(f"expected an image file, got a directory: {p}")
    elif isinstance(source, bytes | bytearray | memoryview):
        if not len(source):
            raise CorruptImageError(f"{what or 'image data'} is empty")
        source = io.BytesIO(source)
    what = what or "image data"
    try:
        with Image.open(source) as img:
            w, h = img.size
            if max_pixels is not None and w * h > max_pixels:
                raise ImageTooLargeError(f"{what} is {w}x{h} pixels; the limit is {max_pixels} pixels "
                                         "(max_pixels)")
            if max_side is not None and max(w, h) > max_side:
                raise ImageTooLargeError(f"{what} is {w}x{h} pixels; the limit is {max_side} pixels "
                                         "on a side (max_side)")
            if spec is not None and img.format == "JPEG":
                img.draft("L" if spec.channels == 1 else "RGB", (spec.size * _SHRINK_TO,) * 2)
            img.load()  # Image.open is lazy: decode now so truncation is caught here
            out = img if spec is None else _shrink(img, spec)
            try:
                out = ImageOps.exif_transpose(out)
            except Exception:  # noqa: BLE001 - a broken EXIF block only loses rotation
                pass
            if out is img:  # detach from the file before the with-block closes it
                out = img.copy()
            return out
    except MegaclassError:
        raise
    except Image.DecompressionBombError as exc:
        raise ImageTooLargeError(f"{what} is too large to decode safely ({exc})") from exc
    except Exception as exc:  # noqa: BLE001 - PIL raises many types for bad data
        raise CorruptImageError(f"cannot decode {what} as an image: {exc}") from exc


def decode_image(path: str | os.PathLike, *, size: int | None = None,
                 spec: InputSpec | None = None) -> torch.Tensor:
    """Decode an image file to a ``(C, H, W)`` float32 tensor in [0, 1] (C from the spec).

    Large images are reduced to about twice the model size (see :func:`open_image`).
    Raises :class:`InvalidInputError` if the file is missing and
    :class:`CorruptImageError` (naming the file) if it cannot be decoded.
    """
    s = as_spec(size, spec)
    return _pil_to_tensor(open_image(path, spec=s), s.channels)


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


def _to_channels(x: torch.Tensor, channel_dim: int, channels: int) -> torch.Tensor:
    """Move a [0, 1] tensor's channel axis (1=L, 2=LA, 3=RGB, 4=RGBA) to dim -3 with
    ``channels`` channels (alpha composited on white)."""
    c = x.shape[channel_dim]
    if c not in (1, 2, 3, 4):
        raise InvalidInputError(f"unsupported number of channels: {c} (expected 1-4)")
    x = x.movedim(channel_dim, -3)
    colour = x[..., :1, :, :] if c in (1, 2) else x[..., :3, :, :]
    if c in (2, 4):
        alpha = x[..., -1:, :, :]
        colour = colour * alpha + (1.0 - alpha)
    if channels == 1 and colour.shape[-3] == 3:
        w = torch.tensor(_LUMA, dtype=colour.dtype).view(3, 1, 1)
        return (colour * w).sum(dim=-3, keepdim=True)
    if channels == 3 and colour.shape[-3] == 1:
        return colour.expand(*colour.shape[:-3], 3, *colour.shape[-2:])
    return colour


def _array_to_chw(x: torch.Tensor, channels: int, *, channels_last: bool) -> torch.Tensor:
    """A single image tensor (H,W) / (H,W,C) / (C,H,W) -> (channels, H, W) in [0, 1]."""
    if x.ndim == 2:
        return _to_channels(_scale(x).unsqueeze(0), 0, channels)
    if x.ndim != 3:
        raise InvalidInputError(f"an image must have 2 or 3 dimensions, got shape {tuple(x.shape)}")
    first, last = x.shape[0] in (1, 2, 3, 4), x.shape[-1] in (1, 2, 3, 4)
    if not (first or last):
        raise InvalidInputError(f"cannot find the channel axis of shape {tuple(x.shape)}")
    dim = -1 if (last and (channels_last or not first)) else 0
    return _to_channels(_scale(x), dim, channels)


def _stack_to_nchw(x: torch.Tensor, channels: int) -> torch.Tensor:
    """(N,H,W) / (N,1,H,W) / (N,C,H,W) / (N,H,W,C) -> (N, channels, H, W) in [0, 1]."""
    if x.ndim == 3:
        return _to_channels(_scale(x).unsqueeze(1), 1, channels)
    if x.ndim != 4:
        raise InvalidInputError(f"a batch must have 2, 3 or 4 dimensions, got shape {tuple(x.shape)}")
    if x.shape[1] == 1:
        return _to_channels(_scale(x), 1, channels)
    if x.shape[-1] in (1, 2, 3, 4):
        return _to_channels(_scale(x), -1, channels)
    if x.shape[1] in (2, 3, 4):
        return _to_channels(_scale(x), 1, channels)
    raise InvalidInputError(f"cannot find the channel axis of shape {tuple(x.shape)}")


# --------------------------------------------------------------------------- geometry
def _resize(x: torch.Tensor, h: int, w: int) -> torch.Tensor:
    if x.shape[-2:] == (h, w):
        return x
    return F.interpolate(x, size=(h, w), mode="bilinear", antialias=True, align_corners=False)


def _border(x: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) -> (N, C, P): the pixels of the four edges."""
    return torch.cat([x[..., 0, :], x[..., -1, :], x[..., :, 0], x[..., :, -1]], dim=-1)


def _normalise(x: torch.Tensor, spec: InputSpec) -> torch.Tensor:
    """(N, C, H, W) float in [0, 1] -> (N, C, size, size) by the spec's geometry and polarity."""
    n, c, h, w = x.shape
    if h == 0 or w == 0:
        raise InvalidInputError(f"image has zero height or width: {(h, w)}")
    step = max(1, _CHUNK // (c * h * w + c * spec.size ** 2))
    if n > step:
        return torch.cat([_normalise(x[i : i + step], spec) for i in range(0, n, step)])
    s = spec.size
    border = _border(x)  # the edges: the pad colour and the polarity test (cheap: 4 lines of pixels)
    if spec.resize == "stretch":
        out = _resize(x, s, s)
    elif spec.resize == "crop":  # the centre square, then scaled: never larger than the image
        m = min(h, w)
        top, left = (h - m) // 2, (w - m) // 2
        out = _resize(x[..., top : top + m, left : left + m], s, s)
    else:  # pad: scale the longer side to s first, so the square is never larger than s x s
        scale = s / max(h, w)
        nh, nw = max(1, min(s, round(h * scale))), max(1, min(s, round(w * scale)))
        inner = _resize(x, nh, nw)
        if (nh, nw) == (s, s):
            out = inner
        else:
            bg = border.median(dim=-1).values
            out = bg.view(n, c, 1, 1).expand(n, c, s, s).clone()
            top, left = (s - nh) // 2, (s - nw) // 2
            out[..., top : top + nh, left : left + nw] = inner
    if spec.polarity == "auto":
        mean = border.mean(dim=-1)  # (n, c)
        luma = mean[:, 0] if c == 1 else (mean * torch.tensor(_LUMA, dtype=mean.dtype)).sum(dim=1)
        flip = luma > 0.5
        out = torch.where(flip.view(n, 1, 1, 1), 1.0 - out, out)
    return out.clamp(0.0, 1.0).contiguous()


def _is_ready(x: torch.Tensor, spec: InputSpec) -> bool:
    shape = (spec.channels, spec.size, spec.size)
    return (x.is_floating_point() and x.ndim in (3, 4) and x.shape[-3:] == shape
            and x.numel() > 0 and bool(x.min() >= 0) and bool(x.max() <= 1))


# --------------------------------------------------------------------------- public
def load_image(path: str | os.PathLike, *, size: int | None = None,
               spec: InputSpec | None = None) -> torch.Tensor:
    """Read an image file (any format PIL opens) as a ``(C, size, size)`` float32 tensor.

    Example
    -------
    >>> load_image("digit.png", size=28).shape  # doctest: +SKIP
    torch.Size([1, 28, 28])
    """
    s = as_spec(size, spec)
    return _normalise(decode_image(path, spec=s).unsqueeze(0), s)[0]


def to_input(image, *, size: int | None = None, spec: InputSpec | None = None) -> torch.Tensor:
    """Normalise one image (PIL image, numpy array, tensor or path) to ``(C, size, size)``.

    Numpy arrays are (H, W) or channels-last (H, W, C); tensors (H, W) or
    channels-first (C, H, W). C may be 1 (L), 2 (LA), 3 (RGB) or 4 (RGBA).

    Example
    -------
    >>> to_input(torch.rand(3, 40, 20), size=16).shape
    torch.Size([1, 16, 16])
    """
    s = as_spec(size, spec)
    if isinstance(image, str | os.PathLike):
        return load_image(image, spec=s)
    if isinstance(image, Image.Image):
        return _normalise(_pil_to_tensor(_shrink(image, s), s.channels).unsqueeze(0), s)[0]
    if isinstance(image, torch.Tensor) and image.ndim == 3 and _is_ready(image, s):
        return image.float()
    x = _as_tensor(image)
    chw = _array_to_chw(x, s.channels, channels_last=not isinstance(image, torch.Tensor))
    return _normalise(chw.unsqueeze(0), s)[0]


def to_batch(samples, *, size: int | None = None, spec: InputSpec | None = None) -> torch.Tensor:
    """Normalise many images to an ``(N, C, size, size)`` float32 batch.

    ``samples`` is a tensor or numpy array (2-D: one image; 3-D: ``(N, H, W)``;
    4-D: ``(N, 1, H, W)``, ``(N, H, W, C)`` or ``(N, C, H, W)``), a path, or a
    list / tuple of single images (paths, PIL images, arrays, tensors; mixed ok).
    A ready float tensor ``(N, C, size, size)`` in [0, 1] is returned unchanged.
    To pass a single colour array use :func:`to_input` or wrap it in a list.

    Example
    -------
    >>> to_batch([np.zeros((28, 28), np.uint8), torch.rand(1, 32, 32)]).shape
    torch.Size([2, 1, 32, 32])
    """
    s = as_spec(size, spec)
    if isinstance(samples, str | os.PathLike | Image.Image):
        return to_input(samples, spec=s).unsqueeze(0)
    if isinstance(samples, torch.Tensor | np.ndarray):
        if samples.ndim >= 3 and samples.shape[0] == 0:
            raise EmptyClassError("no images: the batch is empty")
        if isinstance(samples, torch.Tensor) and samples.ndim == 4 and _is_ready(samples, s):
            return samples.float()
        x = _as_tensor(samples)
        if x.ndim == 2:
            return _normalise(_to_channels(_scale(x).unsqueeze(0), 0, s.channels).unsqueeze(0), s)
        return _normalise(_stack_to_nchw(x, s.channels), s)
    if hasattr(samples, "__iter__"):
        items = list(samples)
        if not items:
            raise EmptyClassError("no images: the sample list is empty")
        return torch.stack([to_input(item, spec=s) for item in items])
    raise InvalidInputError(f"cannot read images from {type(samples).__name__}")
