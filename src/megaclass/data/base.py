"""The interface every labelled sample source implements.

A *source* is a map-style dataset of images with integer label indices, plus the
names of its classes. Images are float32 tensors of shape ``(C, size, size)`` with
values in ``[0, 1]``, converted by the source's ``input_spec`` (the model input
contract, :class:`~megaclass.data.input_spec.InputSpec`: 1 or 3 channels, resize
policy, polarity). Sources without ``input_spec`` yield the 1-channel handwriting
contract (light ink on a dark background).

``labels`` lets samplers (m-per-class, class-balanced) group items by class
without rendering or reading any image.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np
import torch


@runtime_checkable
class Source(Protocol):
    """Labelled samples: ``source[i] -> (image (C,H,W) float32 in [0,1], label index)``."""

    #: number of classes; label indices are ``0 .. num_classes-1``
    num_classes: int
    #: side of the square images this source yields
    size: int

    @property
    def class_names(self) -> list[str]:
        """Human-readable name of each label index (what a gallery stores)."""
        ...

    @property
    def labels(self) -> np.ndarray:
        """int64 array, the label index of every item (``len(labels) == len(self)``)."""
        ...

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]: ...


class LabelledSource:
    """Plumbing shared by sources that hold their class names and labels in memory.

    Subclasses set ``_class_names`` (list of str) and ``_labels`` (int64 array) and
    implement ``__getitem__``.
    """

    _class_names: list[str]
    _labels: np.ndarray

    @property
    def class_names(self) -> list[str]:
        """Name of each label index."""
        return list(self._class_names)

    @property
    def labels(self) -> np.ndarray:
        """int64 label index of every item."""
        return self._labels

    def __len__(self) -> int:
        return len(self._labels)
