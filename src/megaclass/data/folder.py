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

import operator
import os
import warnings
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import torch

from ..errors import ConfigError, CorruptImageError, EmptyClassError, InvalidInputError
from .base import LabelledSource
from .cache import FileDecoder, ImageCache, decode_all
from .images import InputSpec, as_spec, to_batch

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


def _verify_workers(n: int) -> int:
    """Worker processes for the verification pass: none below 256 files (a fork costs more)."""
    cpus = os.cpu_count() or 1
    return min(4, cpus) if n >= 256 and cpus > 1 else 0


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
        error is raised when the file is read. With a cache, this pass fills it (in
        ``min(4, cpu count)`` DataLoader worker processes from 256 files on).
    cache : ``True`` (default): decoded images are kept as uint8 in a
        :class:`~megaclass.data.cache.ImageCache` (in memory when they fit in
        ``cache_memory``, else a memory-mapped file in ``$MEGACLASS_CACHE_DIR`` or
        ``~/.cache/megaclass/images``); a path: a persistent cache file in that
        directory (reused by later runs, invalidated per file when its size or mtime
        changes); ``False``: decode the file at every access.
    cache_memory : bytes (or ``"2G"``, ``"25%"``) the in-memory cache may take
        (default ``$MEGACLASS_CACHE_MEMORY`` or 25 % of RAM).
    skip_bad_files : log a warning naming each corrupt file and leave it out
        (classes left with fewer than ``min_samples`` images are skipped) instead of
        raising :class:`CorruptImageError`.

    Items are ``round(255 * load_image(path)) / 255``, cached or not, so a cached
    epoch sees exactly the tensors an uncached one does (within 0.5/255 of
    :func:`~megaclass.data.images.load_image`).

    Example
    -------
    >>> src = ImageFolderSource("shapes", size=28)  # doctest: +SKIP
    >>> for name, batch in src.iter_classes(): ...  # doctest: +SKIP
    """

    #: read by the trainer's default worker count (decoding runs in DataLoader workers)
    decodes_files = True

    def __init__(self, root: str | os.PathLike, *, size: int | None = None,
                 spec: InputSpec | None = None, extensions: Iterable[str] | None = None,
                 min_samples: int = 1, verify: bool = True, cache: bool | str | os.PathLike = True,
                 cache_memory: int | str | None = None, skip_bad_files: bool = False) -> None:
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
        self.skip_bad_files = bool(skip_bad_files)
        self.skipped_classes: list[str] = sorted(
            n for n, files in found.items() if len(files) < min_samples)
        names = sorted(n for n in found if len(found[n]) >= min_samples)
        if not names:
            raise EmptyClassError(f"no class under {self.root} has at least "
                                  f"{min_samples} image(s)")
        paths = [p for n in names for p in found[n]]
        owner = np.repeat(np.arange(len(names)), [len(found[n]) for n in names])
        if cache is False:
            self._images: FileDecoder = FileDecoder(paths, self.input_spec)
        else:
            self._images = ImageCache(paths, self.input_spec, directory=None if cache is True else cache,
                                      memory_budget=cache_memory, key=f"folder:{self.root.resolve()}")
        keep = np.ones(len(paths), dtype=bool)
        if verify:
            bad = decode_all(self._images, workers=_verify_workers(len(paths)))
            if bad and not self.skip_bad_files:
                raise CorruptImageError(bad[min(bad)])
            for slot in sorted(bad):
                warnings.warn(f"skipping a corrupt image: {bad[slot]}", stacklevel=2)
                keep[slot] = False
            counts = np.bincount(owner[keep], minlength=len(names))
            small = counts < min_samples
            if small.any():
                self.skipped_classes = sorted(self.skipped_classes + [names[k] for k in np.nonzero(small)[0]])
                keep &= ~small[owner]
            if not keep.any():
                raise EmptyClassError(f"no class under {self.root} has at least {min_samples} "
                                      "readable image(s)")
        self._slots = np.nonzero(keep)[0]
        used = np.unique(owner[keep])
        self._class_names = [names[k] for k in used]
        self.paths: list[Path] = [paths[i] for i in self._slots]
        self._labels = np.searchsorted(used, owner[keep]).astype(np.int64)
        self._offsets = np.concatenate([[0], np.cumsum(np.bincount(self._labels))])
        self.num_classes = len(self._class_names)

    @property
    def cache(self) -> FileDecoder:
        """The :class:`~megaclass.data.cache.ImageCache` (``mode`` ``"memory"``/``"file"``), or
        a :class:`~megaclass.data.cache.FileDecoder` (``mode == "none"``) without a cache."""
        return self._images

    def _index(self, index) -> int:
        n = len(self.paths)
        i = operator.index(index)
        if not -n <= i < n:
            raise IndexError(f"index {index} out of range for {n} images")
        return i % n

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        i = self._index(index)
        return self._images.get([self._slots[i]])[0].float().div_(255.0), int(self._labels[i])

    def __getitems__(self, indices: list[int]) -> list[tuple[torch.Tensor, int]]:
        """A whole batch at once (torch's DataLoader calls this when present). With
        ``skip_bad_files`` a corrupt file met here (``verify=False``) is warned about and
        left out of the batch."""
        idx = np.array([self._index(i) for i in indices], dtype=np.int64)
        try:
            u8 = self._images.get(self._slots[idx])
        except CorruptImageError:
            if not self.skip_bad_files:
                raise
            ok = []
            for k, i in enumerate(idx.tolist()):
                try:
                    self._images.fill(self._slots[i])
                    ok.append(k)
                except CorruptImageError as exc:
                    warnings.warn(f"skipping a corrupt image: {exc}", stacklevel=2)
            idx = idx[ok]
            u8 = self._images.get(self._slots[idx])
        return list(zip(u8.float().div_(255.0), self._labels[idx].tolist(), strict=True))

    def class_paths(self, label: int) -> list[Path]:
        """Files of one label index, in order."""
        return self.paths[self._offsets[label] : self._offsets[label + 1]]

    def iter_classes(self) -> Iterator[tuple[str, torch.Tensor]]:
        """Yield ``(class name, (n, C, size, size) batch of all its images)`` per class."""
        for label, name in enumerate(self._class_names):
            yield name, to_batch(self.class_paths(label), spec=self.input_spec)

    def __repr__(self) -> str:
        return (f"ImageFolderSource({str(self.root)!r}, classes={self.num_classes}, "
                f"images={len(self)}, size={self.size}, channels={self.input_spec.channels}, "
                f"cache={self._images.mode!r})")
