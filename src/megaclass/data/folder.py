"""A labelled source read from a folder of class sub-folders.

Layout rule: **a class is every directory below ``root`` that directly contains
image files**; its name is its path relative to ``root`` joined with ``"/"``.
So both ``root/<class>/<image>`` and ``root/<group>/<class>/<image>`` (any depth)
work, and a directory holding images *and* sub-folders of images yields both
classes (``"birds"`` and ``"birds/parrot"``). Image files directly in ``root``
have no class: they are ignored with a warning (an :class:`EmptyClassError` if
``root`` holds nothing else). Hidden files and directories (name starting with
``"."``) and files with other extensions are ignored. Classes are sorted by name
and files by name within a class, so label indices are deterministic.

Example
-------
>>> src = ImageFolderSource("data/train", size=32)  # doctest: +SKIP
>>> image, label = src[0]; src.class_names[label]  # doctest: +SKIP
'birds/parrot'
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import torch

from ..errors import ConfigError, EmptyClassError, InvalidInputError
from .base import LabelledSource
from .images import InputSpec, as_spec, decode_image, load_image, to_batch

__all__ = ["ImageFolderSource", "IMAGE_EXTENSIONS"]

#: extensions (lower case) read by default
IMAGE_EXTENSIONS: frozenset[str] = frozenset({
    ".png", ".jpg", ".jpeg", ".jpe", ".jfif", ".bmp", ".dib", ".gif", ".tif", ".tiff",
    ".webp", ".pgm", ".ppm", ".pbm", ".pnm", ".tga",
})


def _normalise_extensions(extensions: Iterable[str] | None) -> frozenset[str]:
    if extensions is None:
        return IMAGE_EXTENSIONS
    if isinstance(extensions, str):
        extensions = [extensions]
    exts = frozenset(("" if e.startswith(".") else ".") + e.lower() for e in extensions)
    if not exts:
        raise ConfigError("extensions must name at least one file extension")
    return exts


def _scan(root: Path, exts: frozenset[str]) -> dict[str, list[Path]]:
    """Map every directory (relative name, "" for root) to its sorted image files."""
    found: dict[str, list[Path]] = {}
    stack, seen = [(root, "")], set()
    while stack:
        directory, rel = stack.pop()
        real = os.path.realpath(directory)
        if real in seen:  # a symlink loop or a second link to the same folder
            continue
        seen.add(real)
        files, subdirs = [], []
        try:
            entries = list(os.scandir(directory))
        except OSError as exc:
            raise InvalidInputError(f"cannot list directory {directory}: {exc}") from exc
        for entry in entries:
            if entry.name.startswith("."):
                continue
            if entry.is_dir():
                subdirs.append(entry.name)
            elif entry.is_file() and os.path.splitext(entry.name)[1].lower() in exts:
                files.append(entry.name)
        if files:
            found[rel] = [Path(directory, name) for name in sorted(files)]
        stack.extend((Path(directory, d), f"{rel}/{d}" if rel else d) for d in subdirs)
    return found


class ImageFolderSource(LabelledSource):
    """Labelled images from ``root/<class>/...`` (see the module docstring for the rule).

    Parameters
    ----------
    root : path of the folder.
    size : side of the square images yielded (default 32, or ``spec.size``).
    spec : the model input contract (:class:`~megaclass.data.input_spec.InputSpec`):
        channels, resize policy, polarity; default the 1-channel handwriting contract.
        Items are ``(spec.channels, size, size)``.
    extensions : file extensions to read (default :data:`IMAGE_EXTENSIONS`).
    min_samples : classes with fewer images are skipped (listed in ``skipped_classes``).
    verify : decode every file once at construction (JPEGs at reduced scale) so a
        corrupt or truncated file raises :class:`CorruptImageError` naming it now
        rather than mid-training. ``Image.verify()`` alone misses truncated
        JPEG/BMP/GIF/TIFF files, hence the decode. With ``verify=False`` the same
        error is raised when the file is read.

    Example
    -------
    >>> src = ImageFolderSource("shapes", size=28)  # doctest: +SKIP
    >>> for name, batch in src.iter_classes(): ...  # doctest: +SKIP
    """

    def __init__(self, root: str | os.PathLike, *, size: int | None = None,
                 spec: InputSpec | None = None, extensions: Iterable[str] | None = None,
                 min_samples: int = 1, verify: bool = True) -> None:
        self.root = Path(root)
        self.input_spec = as_spec(size, spec)
        self.size = self.input_spec.size
        if isinstance(min_samples, bool) or not isinstance(min_samples, int) or min_samples < 1:
            raise ConfigError(f"min_samples must be an integer >= 1, got {min_samples!r}")
        if not self.root.exists():
            raise InvalidInputError(f"image folder not found: {self.root}")
        if not self.root.is_dir():
            raise InvalidInputError(f"not a directory: {self.root}")
        found = _scan(self.root, _normalise_extensions(extensions))
        stray = found.pop("", [])
        if not found:
            hint = (f" ({len(stray)} image(s) directly in it: put them in root/<class>/)"
                    if stray else "")
            raise EmptyClassError(f"no class folders with images under {self.root}{hint}")
        if stray:
            warnings.warn(f"ignoring {len(stray)} image(s) directly in {self.root} "
                          "(they have no class folder)", stacklevel=2)
        self.skipped_classes: list[str] = sorted(
            n for n, files in found.items() if len(files) < min_samples)
        names = sorted(n for n in found if len(found[n]) >= min_samples)
        if not names:
            raise EmptyClassError(f"no class under {self.root} has at least "
                                  f"{min_samples} image(s)")
        self._class_names = names
        self.paths: list[Path] = [p for n in names for p in found[n]]
        counts = np.array([len(found[n]) for n in names], dtype=np.int64)
        self._labels = np.repeat(np.arange(len(names), dtype=np.int64), counts)
        self._offsets = np.concatenate([[0], np.cumsum(counts)])
        self.num_classes = len(names)
        if verify:
            for path in self.paths:
                decode_image(path, spec=self.input_spec)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        n = len(self.paths)
        if not -n <= index < n:
            raise IndexError(f"index {index} out of range for {n} images")
        return load_image(self.paths[index], spec=self.input_spec), int(self._labels[index])

    def class_paths(self, label: int) -> list[Path]:
        """Files of one label index, in order."""
        return self.paths[self._offsets[label] : self._offsets[label + 1]]

    def iter_classes(self) -> Iterator[tuple[str, torch.Tensor]]:
        """Yield ``(class name, (n, C, size, size) batch of all its images)`` per class."""
        for label, name in enumerate(self._class_names):
            yield name, to_batch(self.class_paths(label), spec=self.input_spec)

    def __repr__(self) -> str:
        return (f"ImageFolderSource({str(self.root)!r}, classes={self.num_classes}, "
                f"images={len(self)}, size={self.size}, channels={self.input_spec.channels})")
