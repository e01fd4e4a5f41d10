"""Procedural handwritten-looking glyphs: an unlimited, storage-free labelled source.

Every integer class id (``0 <= id < 2**31``) deterministically defines a character made
of 2-4 smooth pen strokes (Catmull-Rom splines through 3-5 control points). The shape
depends only on the class id; the seed and the sample index only choose *which drawing*
of it you get (stroke jitter, pen width and pressure, affine warp, smooth elastic
distortion, pixel noise). Images are light ink (~1) on a dark background (~0).

Randomness is counter-based (a splitmix64 hash of ``(seed, class id, index)``), so a
drawing never depends on what else is in the batch, and a whole batch renders in a few
numpy calls: a stroke is a dense chain of Gaussian splats along the curve, and Gaussians
are separable, so each image is one matrix product ``A @ B.T``.

Examples
--------
>>> from megaclass.data.glyphs import GlyphSource, render_glyphs
>>> render_glyphs([7, 7], [0, 1]).shape          # two drawings of character 7
(2, 32, 32)
>>> src = GlyphSource(100, samples_per_class=8)
>>> image, label = src[9]                        # second drawing of class 1
>>> tuple(image.shape), label
((1, 32, 32), 1)
"""

from __future__ import annotations

import operator
from collections.abc import Iterable, Iterator

import numpy as np
import torch

from megaclass.errors import ConfigError, EmptyClassError, InvalidInputError

from .input_spec import InputSpec

__all__ = ["GlyphSource", "render_glyphs"]

MAX_CLASS_ID = 2**31  # class ids are 0 .. MAX_CLASS_ID - 1
_S, _P, _T = 4, 5, 48  # max strokes, max control points per stroke, curve samples per stroke
_CHUNK = 256  # images rendered per vectorised pass
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_CLASS_SALT = np.uint64(0x5EED0F6C1A55E5)
_NOISE_SALT = np.uint64(0x0DDBA11CAFE)


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser on a uint64 array (wrap-around arithmetic)."""
    x = x ^ (x >> np.uint64(30))
    x = x * np.uint64(0xBF58476D1CE4E5B9)
    x = x ^ (x >> np.uint64(27))
    x = x * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def _uniform(key: np.ndarray, n: int) -> np.ndarray:
    """(N,) uint64 keys -> (N, n) float64 uniforms in [0, 1); column k is stream k of key i."""
    ctr = np.arange(1, n + 1, dtype=np.uint64) * _GOLDEN
    return (_mix(key[:, None] + ctr) >> np.uint64(11)) * (1.0 / 2**53)


def _spline_basis() -> np.ndarray:
    """(P+1, T, P): matrix n maps n control points to T samples of their Catmull-Rom curve."""
    out = np.zeros((_P + 1, _T, _P))
    for n in range(2, _P + 1):
        t = np.linspace(0.0, n - 1, _T)
        seg = np.minimum(t.astype(int), n - 2)
        u = t - seg
        coef = 0.5 * np.stack([-u + 2 * u**2 - u**3, 2 - 5 * u**2 + 3 * u**3,
                               u + 4 * u**2 - 3 * u**3, u**3 - u**2], axis=1)
        for j, off in enumerate((-1, 0, 1, 2)):  # end points repeat (clamped neighbours)
            np.add.at(out[n], (np.arange(_T), np.clip(seg + off, 0, n - 1)), coef[:, j])
    return out


_BASIS32 = _spline_basis().astype(np.float32)
_T32 = np.linspace(0, 1, _T, dtype=np.float32)


def _class_shapes(ids: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The seed-free skeleton of each class: control points (N,S,P,2) within about
    [-0.7, 0.7], point counts (N,S) and active-stroke mask (N,S)."""
    n, rows = len(ids), np.arange(len(ids))
    u = _uniform(_mix(ids.astype(np.uint64) ^ _CLASS_SALT), 1 + _S * 15)
    active = np.arange(_S) < 2 + (u[:, :1] * 3).astype(int)
    u = u[:, 1:].reshape(n, _S, 15)
    n_pts = 3 + (u[..., 0] * 3).astype(int)
    pts = np.zeros((n, _S, _P, 2))
    for s in range(_S):
        p = u[:, s, 1:3] * 1.6 - 0.8
        if s:  # often start on a point of an earlier stroke, so strokes join like letters
            src = (u[:, s, 3] * s).astype(int)
            j = (u[:, s, 4] * n_pts[rows, src]).astype(int)
            p = np.where((u[:, s, 5] < 0.5)[:, None], pts[rows, src, j], p)
        theta = u[:, s, 6] * 2 * np.pi
        pts[:, s, 0] = p
        for k in range(1, _P):  # a pen walk: steps of 0.3-0.8 turning by up to +-90 deg
            theta = theta + (u[:, s, 6 + k] - 0.5) * 3.2
            step = 0.3 + 0.5 * u[:, s, 10 + k]
            p = np.clip(p + step[:, None] * np.stack([np.cos(theta), np.sin(theta)], 1), -1, 1)
            pts[:, s, k] = p
    valid = active[..., None] & (np.arange(_P) < n_pts[..., None])
    lo = np.where(valid[..., None], pts, np.inf).min(axis=(1, 2))
    hi = np.where(valid[..., None], pts, -np.inf).max(axis=(1, 2))
    scale = 1.4 / np.maximum((hi - lo).max(axis=1), 0.6)
    pts = (pts - ((lo + hi) / 2)[:, None, None]) * scale[:, None, None, None]
    return pts, n_pts, active


def class_skeletons(class_ids) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The seed-free skeleton every drawing of a class is jittered from: control points
    ``(N, 4, 5, 2)``, point counts ``(N, 4)`` and active-stroke mask ``(N, 4)`` (read-only
    view of what :func:`render_glyphs` draws; used by :mod:`.glyph_attributes`)."""
    ids = np.asarray(class_ids, dtype=np.int64).reshape(-1)
    if ids.size and (ids.min() < 0 or ids.max() >= MAX_CLASS_ID):
        raise InvalidInputError(f"class ids must be in [0, {MAX_CLASS_ID})")
    return _class_shapes(ids)


def render_glyphs(class_ids, indices, *, size: int = 32, seed: int = 0) -> np.ndarray:
    """Render drawing ``indices[i]`` of glyph class ``class_ids[i]`` for every i.

    Parameters
    ----------
    class_ids, indices : array-like of int, shape (N,)
        Class ids in ``[0, 2**31)`` and non-negative sample indices.
    size : int, default 32
        Side of the square output images (>= 8).
    seed : int, default 0
        Drawing stream; the same triple (id, index, seed) always gives the same image.

    Returns
    -------
    ndarray of shape (N, size, size), float32 in [0, 1], light ink on dark background.

    Examples
    --------
    >>> imgs = render_glyphs([3, 3, 5], [0, 1, 0], size=48, seed=1)
    >>> imgs.shape, imgs.dtype
    ((3, 48, 48), dtype('float32'))
    """
    size = _check_size(size)
    ids, idx = np.asarray(class_ids), np.asarray(indices)
    if ids.ndim != 1 or ids.shape != idx.shape:
        raise InvalidInputError(f"class_ids and indices must be 1-D of equal length, got "
                                f"shapes {ids.shape} and {idx.shape}")
    if ids.size == 0:
        return np.zeros((0, size, size), np.float32)
    if ids.dtype.kind not in "iu" or idx.dtype.kind not in "iu":
        raise InvalidInputError("class_ids and indices must be integers")
    if ids.min() < 0 or ids.max() >= MAX_CLASS_ID or idx.min() < 0:
        raise InvalidInputError(f"class ids must be in [0, {MAX_CLASS_ID}) and indices >= 0")
    s64 = np.uint64(operator.index(seed) % 2**64)
    out = np.empty((len(ids), size, size), np.float32)
    for i in range(0, len(ids), _CHUNK):  # chunks keep the temporaries in cache
        out[i : i + _CHUNK] = _render(ids[i : i + _CHUNK], idx[i : i + _CHUNK], size, s64)
    return out


def _render(ids: np.ndarray, idx: np.ndarray, size: int, s64: np.uint64) -> np.ndarray:
    """render_glyphs on validated arrays (one chunk)."""
    n = len(ids)
    key = _mix(_mix(_mix(np.full(n, s64)) + ids.astype(np.uint64)) + idx.astype(np.uint64))
    f32 = np.float32
    u = _uniform(key, 2 * _S * _P + 30).astype(f32)
    ctrl, n_pts, active = _class_shapes(ids)
    ctrl = ctrl.astype(f32) + (u[:, : 2 * _S * _P].reshape(ctrl.shape) - f32(0.5)) * f32(0.14)
    u = u[:, 2 * _S * _P :, None, None]  # per-sample parameters, broadcast over (S, T)
    curve = _BASIS32[n_pts] @ ctrl  # (N, S, T, 2) Catmull-Rom samples, with stroke jitter
    x, y = curve[..., 0], curve[..., 1]
    # affine: rotation +-11 deg, scale 0.8-1.0, aspect +-8 %, shear +-0.15, shift +-0.12
    rot, scl = (u[:, 0] - 0.5) * 0.4, 0.8 + 0.2 * u[:, 1]
    asp, shr = 1 + (u[:, 2] - 0.5) * 0.16, (u[:, 3] - 0.5) * 0.3
    c, s = np.cos(rot) * scl, np.sin(rot) * scl
    x, y = (c * asp * x + (shr * c - s) * y + (u[:, 4] - 0.5) * 0.24,
            s * asp * x + (shr * s + c) * y + (u[:, 5] - 0.5) * 0.24)
    # elastic: a smooth displacement field, two random plane waves per axis
    w = u[:, 6:22, 0, 0].reshape(n, 1, 1, 4, 4)  # waves (x1, x2, y1, y2) x (fx, fy, phase, amp)
    arg = x[..., None] * ((w[..., 0] - 0.5) * 7) + y[..., None] * ((w[..., 1] - 0.5) * 7)
    arg = np.sin(arg + w[..., 2] * f32(2 * np.pi), out=arg) * (w[..., 3] * f32(0.035))
    x, y = x + arg[..., 0] + arg[..., 1], y + arg[..., 2] + arg[..., 3]
    # splat weights: arc length per sample point (pixels) x pen pressure x stroke mask
    half = f32(size / 2)
    seg = np.hypot(np.diff(x, axis=2), np.diff(y, axis=2)) * half
    ds = np.zeros_like(x)
    ds[..., 1:] += seg
    ds[..., :-1] += seg
    pressure = 1 + 0.3 * np.sin(f32(2 * np.pi) * (u[:, 22] * 2 * _T32 + u[:, 23]))
    sigma = (0.03 + 0.03 * u[:, 24]) * half  # pen radius ~0.5-1 px at 32x32, (N, 1, 1)
    wgt = ds * pressure * active[..., None] / (f32(2 * np.sqrt(2 * np.pi)) * sigma)
    grid = np.arange(size, dtype=f32)[:, None]
    inv = f32(-0.5) / sigma**2
    a = _profile(grid, y.reshape(n, 1, -1), half, inv) * wgt.reshape(n, 1, -1)  # (N, H, S*T)
    b = _profile(grid, x.reshape(n, 1, -1), half, inv)  # (N, W, S*T)
    img = a @ b.transpose(0, 2, 1)  # (N, H, W): sum of separable Gaussians along the strokes
    img = np.minimum(img * f32(1.6), 1, out=img)
    img *= 0.75 + 0.25 * u[:, 25]
    # pixel noise: four 16-bit uniforms per hash, amplitude up to +-0.15
    ctr = np.arange(1, (size * size + 3) // 4 + 1, dtype=np.uint64) * _GOLDEN
    h = _mix((key ^ _NOISE_SALT)[:, None] + ctr).astype("<u8", copy=False).view("<u2")
    noise = h[:, : size * size].reshape(n, size, size).astype(f32) * f32(1 / 65536) - f32(0.5)
    img += noise * (0.3 * u[:, 26])
    return np.clip(img, 0, 1, out=img)


def _profile(grid, coord, half, inv) -> np.ndarray:
    """exp(inv * (pixel centre - point)^2) for canvas coordinates in [-1, 1], in place."""
    d = grid - (coord + 1) * half + np.float32(0.5)
    d *= d
    d *= inv
    return np.exp(d, out=d)


def _check_size(size) -> int:
    if not isinstance(size, int | np.integer) or size < 8:
        raise ConfigError(f"size must be an integer >= 8, got {size!r}")
    return int(size)


def _as_ids(classes) -> np.ndarray:
    if isinstance(classes, bool) or not isinstance(classes, int | np.integer | Iterable):
        raise ConfigError(f"classes must be an int, a range or an iterable of ints, "
                          f"got {classes!r}")
    if isinstance(classes, int | np.integer):
        classes = range(int(classes))
    if isinstance(classes, range):  # no Python-level loop, always unique
        ids = np.arange(classes.start, classes.stop, classes.step, dtype=np.int64)
    else:
        ids = np.asarray(list(classes))
    if ids.size == 0:
        raise EmptyClassError("classes is empty: a GlyphSource needs at least one class id")
    if ids.ndim != 1 or ids.dtype.kind not in "iu":
        raise ConfigError("classes must be a flat collection of integer class ids")
    if ids.min() < 0 or ids.max() >= MAX_CLASS_ID:
        raise ConfigError(f"class ids must be in [0, {MAX_CLASS_ID}), "
                          f"got min {ids.min()} and max {ids.max()}")
    if not isinstance(classes, range) and len(np.unique(ids)) != len(ids):
        raise ConfigError("class ids must be unique")
    return ids.astype(np.int64)


class GlyphSource:
    """Map-style :class:`~megaclass.data.base.Source` of procedural glyphs.

    Item ``i`` is drawing ``i % samples_per_class`` (shifted by the epoch) of class
    ``class_ids[i // samples_per_class]``, labelled with label index
    ``i // samples_per_class``. Nothing is stored; each item renders on demand.

    Parameters
    ----------
    classes : int, range or iterable of int, default range(1000)
        Glyph class ids (``n`` means ``range(n)``); unique, in ``[0, 2**31)``.
    samples_per_class : int, default 32
    size : int, default 32
    seed : int, default 0
        Drawing stream. Class shapes do not depend on it.
    channels : int, default 1
        3 repeats the drawing on three channels (to train or test a colour model on glyphs).

    Examples
    --------
    >>> src = GlyphSource([10, 20, 30], samples_per_class=4, size=48)
    >>> len(src), src.class_names[1], src.labels[5]
    (12, 'glyph-20', np.int64(1))
    >>> src.set_epoch(1)                   # same items, fresh drawings
    >>> GlyphSource.samples(20, 3, seed=99).shape
    torch.Size([3, 1, 32, 32])
    """

    def __init__(self, classes=range(1000), *, samples_per_class: int = 32, size: int = 32,
                 seed: int = 0, channels: int = 1):
        if not isinstance(samples_per_class, int | np.integer) or samples_per_class < 1:
            raise ConfigError(f"samples_per_class must be an integer >= 1, "
                              f"got {samples_per_class!r}")
        if not isinstance(seed, int | np.integer):
            raise ConfigError(f"seed must be an integer, got {seed!r}")
        self.class_ids = _as_ids(classes)
        self.num_classes = len(self.class_ids)
        self.samples_per_class = int(samples_per_class)
        self.size = _check_size(size)
        if channels not in (1, 3):
            raise ConfigError(f"channels must be 1 or 3, got {channels!r}")
        self.channels = int(channels)
        self.seed = int(seed)
        self.epoch = 0

    @property
    def input_spec(self) -> InputSpec:
        """The handwriting contract at this source's size (and channels)."""
        return InputSpec(channels=self.channels, size=self.size, resize="pad", polarity="auto")

    @property
    def class_names(self) -> list[str]:
        return [f"glyph-{c}" for c in self.class_ids.tolist()]

    @property
    def labels(self) -> np.ndarray:
        return np.repeat(np.arange(self.num_classes, dtype=np.int64), self.samples_per_class)

    def set_epoch(self, epoch: int) -> None:
        """Make item i show drawing ``epoch * samples_per_class + i % samples_per_class``."""
        if not isinstance(epoch, int | np.integer) or epoch < 0:
            raise ConfigError(f"epoch must be an integer >= 0, got {epoch!r}")
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.num_classes * self.samples_per_class

    def __repr__(self) -> str:
        return (f"GlyphSource(num_classes={self.num_classes}, samples_per_class="
                f"{self.samples_per_class}, size={self.size}, seed={self.seed})")

    def _render(self, items: np.ndarray) -> torch.Tensor:
        lab, j = np.divmod(items, self.samples_per_class)
        imgs = render_glyphs(self.class_ids[lab], self.epoch * self.samples_per_class + j,
                             size=self.size, seed=self.seed)
        x = torch.from_numpy(imgs).unsqueeze(1)
        return x.expand(-1, 3, -1, -1).contiguous() if self.channels == 3 else x

    def _index(self, i) -> int:
        i, n = operator.index(i), len(self)
        if not -n <= i < n:
            raise IndexError(f"index {i} out of range for GlyphSource of length {n}")
        return i % n

    def __getitem__(self, i) -> tuple[torch.Tensor, int]:
        i = self._index(i)
        return self._render(np.array([i]))[0], i // self.samples_per_class

    def __getitems__(self, indices: list[int]) -> list[tuple[torch.Tensor, int]]:
        """Render a whole batch at once (torch's DataLoader calls this when present)."""
        items = np.array([self._index(i) for i in indices], dtype=np.int64)
        imgs = self._render(items)
        return list(zip(imgs, (items // self.samples_per_class).tolist(), strict=True))

    def iter_classes(self, chunk: int = 1024) -> Iterator[tuple[str, torch.Tensor]]:
        """``(glyph-<id>, its samples_per_class drawings)`` per class, rendered ``chunk`` classes
        at a time (the items ``source[i]`` of each class, so the epoch's drawings).

        >>> [(name, tuple(x.shape)) for name, x in GlyphSource([7, 9], samples_per_class=2).iter_classes()]
        [('glyph-7', (2, 1, 32, 32)), ('glyph-9', (2, 1, 32, 32))]
        """
        if not isinstance(chunk, int | np.integer) or chunk < 1:
            raise ConfigError(f"chunk must be an integer >= 1, got {chunk!r}")
        per = self.samples_per_class
        for lo in range(0, self.num_classes, int(chunk)):
            hi = min(self.num_classes, lo + int(chunk))
            images = self._render(np.arange(lo * per, hi * per, dtype=np.int64))
            for k, cid in enumerate(self.class_ids[lo:hi].tolist()):
                yield f"glyph-{cid}", images[k * per:(k + 1) * per]

    @staticmethod
    def samples(class_id: int, n: int = 1, *, seed: int = 0, size: int = 32,
                start: int = 0) -> torch.Tensor:
        """Drawings ``start .. start+n-1`` of one class: (n, 1, size, size) float32."""
        return GlyphSource.batch([class_id], n, seed=seed, size=size, start=start)[0]

    @staticmethod
    def batch(class_ids, n: int = 1, *, seed: int = 0, size: int = 32,
              start: int = 0) -> tuple[torch.Tensor, np.ndarray]:
        """``n`` drawings of each class id: images (len*n, 1, size, size), ids (len*n,) int64."""
        if not isinstance(n, int | np.integer) or n < 1:
            raise ConfigError(f"n must be an integer >= 1, got {n!r}")
        if not isinstance(start, int | np.integer) or start < 0:
            raise ConfigError(f"start must be an integer >= 0, got {start!r}")
        ids = np.asarray(class_ids).reshape(-1)
        ids = np.repeat(ids.astype(np.int64) if ids.size == 0 else ids, n)
        idx = np.tile(np.arange(start, start + n, dtype=np.int64), len(ids) // n)
        imgs = render_glyphs(ids, idx, size=size, seed=seed)  # validates the ids
        return torch.from_numpy(imgs).unsqueeze(1), ids.astype(np.int64)
