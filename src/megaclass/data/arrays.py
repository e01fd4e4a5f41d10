"""A labelled source built from in-memory arrays or tensors.

Images are normalised **once, at construction**, with :func:`to_batch` (so they
take ``N * size * size * 4`` bytes; a ready float tensor ``(N, 1, size, size)``
in [0, 1] is kept as is, without a copy). Labels may be any sortable hashable
values (ints, strings, tuples...): they are mapped to indices in the sorted order
of the unique labels, and ``class_names`` are their ``str``.

Example
-------
>>> import numpy as np
>>> src = ArraySource(np.zeros((3, 28, 28), np.uint8), ["cat", "ant", "cat"])
>>> src.class_names, src.labels.tolist(), src.size
(['ant', 'cat'], [1, 0, 1], 28)
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from ..errors import EmptyClassError, InvalidInputError
from .base import LabelledSource
from .images import InputSpec, _check_size, as_spec, to_batch

__all__ = ["ArraySource", "encode_labels"]


def _infer_size(images) -> int:
    """Longest spatial side of an array batch (32 for lists)."""
    if not isinstance(images, np.ndarray | torch.Tensor):
        return 32
    shape = tuple(images.shape)
    if len(shape) == 3:
        return max(shape[1:])
    if len(shape) == 4:
        if shape[1] != 1 and shape[-1] in (1, 2, 3, 4):
            return max(shape[1:3])
        return max(shape[2:])
    raise InvalidInputError(f"images must have 3 or 4 dimensions, got shape {shape}")


def _label_array(labels) -> np.ndarray:
    if isinstance(labels, torch.Tensor):
        return labels.detach().cpu().numpy()
    if isinstance(labels, np.ndarray):
        return labels
    values = list(labels)
    kinds = {type(v) for v in values}
    if all(issubclass(t, str) for t in kinds):
        return np.array(values, dtype=str) if values else np.array([], dtype=str)
    if any(issubclass(t, str) for t in kinds):
        raise InvalidInputError("labels mix strings and other types; use one kind")
    if all(issubclass(t, int | float | np.number) for t in kinds):
        return np.asarray(values)
    arr = np.empty(len(values), dtype=object)
    arr[:] = values
    return arr


def encode_labels(labels, *, class_names: Sequence[str] | None = None
                  ) -> tuple[np.ndarray, list[str]]:
    """Map labels to ``(int64 indices, class names)``.

    Without ``class_names`` indices follow the sorted unique labels. With it,
    labels must already be integer indices into ``class_names``.

    Example
    -------
    >>> encode_labels([10, 2, 10])
    (array([1, 0, 1]), ['2', '10'])
    """
    arr = _label_array(labels)
    if arr.ndim != 1:
        raise InvalidInputError(f"labels must be one-dimensional, got shape {arr.shape}")
    if arr.dtype.kind == "f" and not np.isfinite(arr).all():
        raise InvalidInputError("labels contain NaN or inf")
    if class_names is not None:
        names = [str(c) for c in class_names]
        if len(set(names)) != len(names):
            raise InvalidInputError("class_names contains duplicates")
        if arr.size and arr.dtype.kind not in "iu":
            raise InvalidInputError("with class_names, labels must be integer indices")
        if arr.size and (arr.min() < 0 or arr.max() >= len(names)):
            raise InvalidInputError(
                f"label indices must be in [0, {len(names)}) to match class_names")
        return arr.astype(np.int64), names
    try:
        uniq, inverse = np.unique(arr, return_inverse=True)
    except TypeError as exc:
        raise InvalidInputError(f"labels cannot be sorted: {exc}") from exc
    return inverse.reshape(-1).astype(np.int64), [str(u) for u in uniq.tolist()]


class ArraySource(LabelledSource):
    """Labelled images from arrays: ``ArraySource(images, labels)``.

    Parameters
    ----------
    images : numpy array or tensor ``(N, H, W)``, ``(N, 1, H, W)``, ``(N, H, W, C)``
        or ``(N, C, H, W)`` (any dtype :func:`to_batch` accepts), or a list of images.
    labels : ``N`` hashable values (ints, strings...) or a tensor.
    size : output side; default: the longest side of the images (32 for lists), or ``spec.size``.
    spec : the model input contract (channels, resize, polarity); default the 1-channel
        handwriting contract.
    class_names : optional names when ``labels`` are already indices ``0..C-1``;
        classes without items are then allowed (``num_classes == len(class_names)``).
    """

    def __init__(self, images, labels, *, size: int | None = None, spec: InputSpec | None = None,
                 class_names: Sequence[str] | None = None) -> None:
        if isinstance(images, np.ndarray | torch.Tensor) and images.ndim not in (3, 4):
            raise InvalidInputError(f"images must be a 3-D or 4-D batch (N, H, W[, C]), got "
                                    f"shape {tuple(images.shape)}")
        n = len(images)
        if n == 0:
            raise EmptyClassError("ArraySource needs at least one image")
        if size is None and spec is None:
            size = _infer_size(images)
        self.input_spec = as_spec(None if size is None else _check_size(size), spec)
        self.size = self.input_spec.size
        self._labels, self._class_names = encode_labels(labels, class_names=class_names)
        if len(self._labels) != n:
            raise InvalidInputError(
                f"got {n} images but {len(self._labels)} labels; they must match")
        self.images: torch.Tensor = to_batch(images, spec=self.input_spec)
        self.num_classes = len(self._class_names)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.images[index], int(self._labels[index])

    def __repr__(self) -> str:
        return (f"ArraySource(classes={self.num_classes}, images={len(self)}, "
                f"size={self.size})")
