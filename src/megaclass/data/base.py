"""The interface every labelled sample source implements.

A *source* is a map-style dataset of images with integer label indices, plus the
names of its classes. Images are float32 tensors of shape ``(C, size, size)`` with
values in ``[0, 1]``, converted by the source's ``input_spec`` (the model input
contract, :class:`~megaclass.data.input_spec.InputSpec`: 1 or 3 channels, resize
policy, polarity). Sources without ``input_spec`` yield the 1-channel handwriting
contract (light ink on a dark background).

``labels`` lets samplers (m-per-class, class-balanced) group items by class
without rendering or reading any image. ``iter_classes()`` streams the source class by
class, ``(class name, all its images)``: what :meth:`Recognizer.enroll_many
<megaclass.recognizer.Recognizer.enroll_many>` takes, so enrolling every class of any
source -- glyphs or a folder -- is one line with bounded memory::

    rec.enroll_many(source.iter_classes())
"""

from __future__ import annotations

from collections.abc import Iterator
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

    def iter_classes(self) -> Iterator[tuple[str, torch.Tensor]]:
        """Every class with samples, in label order: ``(class name, (n, C, H, W) images)``.

        Streamed (one class, or one rendered chunk of classes, in memory at a time); the
        images are the items ``source[i]`` of that class.
        """
        ...


class LabelledSource:
    """Plumbing shared by sources that hold their class names and labels in memory.

    Subclasses set ``_class_names`` (list of str) and ``_labels`` (int64 array) and
    implement ``__getitem__`` (and ``__getitems__`` when a batch reads faster).
    """

    _class_names: list[str]
    _labels: np.ndarray
    num_classes: int
    size: int

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        raise NotImplementedError

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

    def iter_classes(self) -> Iterator[tuple[str, torch.Tensor]]:
        """``(class name, images)`` per class with samples, in label order (see :class:`Source`)."""
        return iter_classes_of(self)


def iter_classes_of(source: Source) -> Iterator[tuple[str, torch.Tensor]]:
    """:meth:`Source.iter_classes` from ``labels`` and item access, for any source.

    A class without samples is skipped (nothing to enroll). Uses ``__getitems__`` (one
    batched read per class) when the source has it.

    >>> from megaclass.data import ArraySource
    >>> src = ArraySource(torch.zeros(5, 1, 8, 8), ["b", "a", "b", "b", "a"])
    >>> [(name, len(x)) for name, x in src.iter_classes()]
    [('a', 2), ('b', 3)]
    """
    labels = np.asarray(source.labels)
    order = np.argsort(labels, kind="stable")
    bounds = np.searchsorted(labels[order], np.arange(source.num_classes + 1))
    names = source.class_names
    batch = getattr(source, "__getitems__", None)
    for label in range(source.num_classes):
        idx = order[bounds[label]: bounds[label + 1]].tolist()
        if not idx:
            continue
        items = batch(idx) if batch is not None else [source[i] for i in idx]
        yield names[label], torch.stack([x for x, _ in items])
