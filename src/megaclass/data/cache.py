"""A cache of decoded, resized images, so that training decodes each file once.

:class:`ImageCache` keeps the images of a list of files as **uint8**
``(N, C, size, size)`` (a quarter of float32), converted by the model input
contract (:class:`~megaclass.data.input_spec.InputSpec`): what is stored is
``round(255 * load_image(path, spec=spec))``. A slot is decoded the first time it
is asked for (or by :meth:`ImageCache.fill`) and read back from then on.

Where it lives
--------------
* **memory** when the images fit in the memory budget (``memory_budget``, default
  ``$MEGACLASS_CACHE_MEMORY`` or 25 % of physical RAM; ``"2G"``, ``"512M"`` or
  ``"10%"`` are accepted): an anonymous shared-memory tensor (``share_memory_()``),
  lost when the process ends;
* else, or when a ``directory`` is given, a **memory-mapped cache file** in
  ``directory`` (default ``$MEGACLASS_CACHE_DIR`` or ``~/.cache/megaclass/images``):
  one set of files per (key, pixel fields of the spec), reused by later runs::

      <digest>.u8      raw uint8 images, N x C x size x size
      <digest>.filled  one byte per slot: 1 once its image is stored
      <digest>.json    the index: format, spec, shape, [path, bytes, mtime_ns] per slot

  No pickle. On open every file is ``stat``-ed; a slot whose file changed size or
  modification time is invalidated (decoded again), files no longer listed are
  dropped and new ones added (the old slots are copied into a new cache file).
  The key is what names the set of files (:class:`ImageFolderSource` uses its
  resolved root), so a folder has one cache file per contract.

Pixel fields are ``channels``, ``size``, ``resize``, ``polarity``; ``mean``/``std``
are applied by the model and do not change the cache.

Worker processes
----------------
Both storages are ``MAP_SHARED`` mappings, inherited by ``fork``-ed DataLoader
workers: a worker that decodes a slot writes the pixels, then its ``filled`` byte,
into memory every process sees, so the main process and the other workers find it
filled. (Under ``spawn`` the cache pickles as a handle: the shared tensor travels
through torch's shared-memory reduction, a file cache reopens its files by path.)
Two workers may decode the same slot at the same time: they write the same bytes.
A reader only trusts a slot whose ``filled`` byte is 1, and that byte is written
after the pixels (x86 keeps stores in order; a slot is at worst decoded twice).

Errors: a cache directory that cannot be created or written raises
:class:`~megaclass.errors.ConfigError` naming the directory (no silent fallback:
the user asked for a file cache, or the images do not fit in memory). An
undecodable file raises :class:`~megaclass.errors.CorruptImageError` naming it.

Example
-------
>>> cache = ImageCache(["a.jpg", "b.jpg"], InputSpec.preset("photo", size=112))  # doctest: +SKIP
>>> cache.get([1, 0]).shape, cache.mode  # doctest: +SKIP
(torch.Size([2, 3, 112, 112]), 'memory')
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from ..errors import ConfigError, CorruptImageError
from .images import load_image
from .input_spec import InputSpec

__all__ = ["ImageCache", "FileDecoder", "decode_uint8", "decode_all", "default_cache_dir",
           "memory_budget", "PIXEL_FIELDS"]

#: the InputSpec fields that change the cached pixels
PIXEL_FIELDS = ("channels", "size", "resize", "polarity")
_FORMAT = 1


def default_cache_dir() -> Path:
    """``$MEGACLASS_CACHE_DIR``, else ``$XDG_CACHE_HOME/megaclass/images`` (``~/.cache/...``)."""
    env = os.environ.get("MEGACLASS_CACHE_DIR")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "megaclass" / "images"


def _physical_memory() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # not POSIX: assume 8 GiB
        return 8 << 30


def memory_budget(value: int | str | None = None) -> int:
    """Bytes an in-memory cache may take: ``value``, else ``$MEGACLASS_CACHE_MEMORY``, else
    25 % of physical RAM. Strings take a K/M/G suffix (powers of 1024) or end in ``%``."""
    if value is None:
        value = os.environ.get("MEGACLASS_CACHE_MEMORY", "25%")
    if isinstance(value, bool):
        raise ConfigError(f"cache memory budget must be bytes or a percentage, got {value!r}")
    if isinstance(value, int | np.integer):
        n = int(value)
    else:
        text = str(value).strip().upper().removesuffix("B")
        try:
            if text.endswith("%"):
                n = int(_physical_memory() * float(text[:-1]) / 100)
            else:
                mult = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}.get(text[-1:], 1)
                n = int(float(text[:-1] if mult > 1 else text) * mult)
        except ValueError:
            raise ConfigError(f"bad cache memory budget {value!r}: use bytes, e.g. 2G, 512M or 25%") from None
    if n < 0:
        raise ConfigError(f"cache memory budget must be >= 0, got {value!r}")
    return n


def decode_uint8(path: str | os.PathLike, spec: InputSpec) -> torch.Tensor:
    """One file as the cache stores it: ``(C, size, size)`` uint8, ``round(255 * load_image)``."""
    return load_image(path, spec=spec).mul_(255.0).round_().to(torch.uint8)


def _stat(path: Path) -> tuple[int, int]:
    try:
        st = os.stat(path)
    except OSError:
        return (-1, -1)
    return (int(st.st_size), int(st.st_mtime_ns))


class FileDecoder:
    """The no-cache twin of :class:`ImageCache`: decodes the files on every access."""

    mode = "none"

    def __init__(self, paths: Sequence[str | os.PathLike], spec: InputSpec) -> None:
        self.paths = [Path(p) for p in paths]
        self.spec = spec

    def __len__(self) -> int:
        return len(self.paths)

    def fill(self, slot: int) -> None:
        """Decode one file (to check it); nothing is kept."""
        decode_uint8(self.paths[slot], self.spec)

    def get(self, slots) -> torch.Tensor:
        """``(B, C, size, size)`` uint8 images of the given slots."""
        return torch.stack([decode_uint8(self.paths[int(i)], self.spec) for i in np.asarray(slots)])


class ImageCache(FileDecoder):
    """Decoded images of ``paths`` under ``spec`` as uint8, in memory or in a cache file.

    Parameters
    ----------
    paths : the image files; slot ``i`` holds ``paths[i]``.
    spec : the input contract (only :data:`PIXEL_FIELDS` matter).
    directory : a directory for a persistent cache file; default: memory when
        :attr:`nbytes` fits in ``memory_budget``, else :func:`default_cache_dir`.
    memory_budget : bytes (or ``"2G"``, ``"25%"``) allowed in memory (see :func:`memory_budget`).
    key : what names this set of files in the cache directory (default: a hash of the paths).

    Attributes
    ----------
    mode : ``"memory"`` or ``"file"``.
    path : the cache file (``<digest>.u8``) in file mode, else None.
    nbytes : bytes of image storage.
    """

    def __init__(self, paths: Sequence[str | os.PathLike], spec: InputSpec, *,
                 directory: str | os.PathLike | None = None, memory_budget: int | str | None = None,
                 key: str | None = None) -> None:
        super().__init__(paths, spec)
        n = len(self.paths)
        self.shape = (spec.channels, spec.size, spec.size)
        self.nbytes = n * int(np.prod(self.shape))
        self.path: Path | None = None
        budget = _budget(memory_budget)  # the parameter shadows the function
        if directory is None and self.nbytes <= budget:
            self.mode = "memory"
            self._data_t = torch.empty((n, *self.shape), dtype=torch.uint8).share_memory_()
            self._filled_t = torch.zeros(n, dtype=torch.uint8).share_memory_()
            self._views()
        else:
            self.mode = "file"
            self._open_file(Path(directory) if directory is not None else default_cache_dir(), key)

    # -- storage -------------------------------------------------------------------
    def _views(self) -> None:
        self._data, self._filled = self._data_t.numpy(), self._filled_t.numpy()

    def _digest(self, key: str | None) -> str:
        pixels = {f: getattr(self.spec, f) for f in PIXEL_FIELDS}
        if key is None:
            key = hashlib.sha256("\n".join(map(str, self.paths)).encode()).hexdigest()
        text = json.dumps({"format": _FORMAT, "key": key, "spec": pixels}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:32]

    def _open_file(self, directory: Path, key: str | None) -> None:
        if not self.paths:
            raise ConfigError("an image cache file needs at least one image")
        try:
            directory.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=directory, prefix=".probe-"):
                pass
        except OSError as exc:
            raise ConfigError(
                f"image cache directory {directory} is not writable ({exc.strerror or exc}); "
                "set MEGACLASS_CACHE_DIR or pass cache=<a writable directory>, or cache=False"
            ) from exc
        base = directory / self._digest(key)
        self.path = base.with_suffix(".u8")
        files = [[str(p), *_stat(p)] for p in self.paths]
        old = _read_index(base.with_suffix(".json"), self.shape)
        n = len(files)
        same_list = (old is not None and [f[0] for f in old["files"]] == [f[0] for f in files]
                     and _size(self.path) == self.nbytes and _size(base.with_suffix(".filled")) == n)
        if same_list and old is not None:
            data = np.memmap(self._file(), dtype=np.uint8, mode="r+", shape=(n, *self.shape))
            filled = np.memmap(base.with_suffix(".filled"), dtype=np.uint8, mode="r+", shape=(n,))
            changed = [i for i, (a, b) in enumerate(zip(old["files"], files, strict=True)) if a != b]
            if changed:
                filled[changed] = 0
                filled.flush()
        else:
            data, filled = self._rebuild(base, files, old)
        _write_json(base.with_suffix(".json"), {"format": _FORMAT, "shape": list(self.shape),
                                                "spec": {f: getattr(self.spec, f) for f in PIXEL_FIELDS},
                                                "key": key, "files": files})
        self._data, self._filled = data, filled

    def _file(self) -> Path:
        """The cache's pixel file (file mode; a cache in memory has none)."""
        if self.path is None:
            raise RuntimeError("this image cache is held in memory: it has no file")
        return self.path

    def _rebuild(self, base: Path, files: list, old: dict | None):
        """New cache files for ``files``, keeping the still-valid slots of the old ones."""
        n = len(files)
        index = base.with_suffix(".json")
        index.unlink(missing_ok=True)  # an index never describes files it does not match
        tmp_data, tmp_filled = base.with_suffix(".u8.tmp"), base.with_suffix(".filled.tmp")
        data = np.memmap(tmp_data, dtype=np.uint8, mode="w+", shape=(n, *self.shape))
        filled = np.memmap(tmp_filled, dtype=np.uint8, mode="w+", shape=(n,))
        if old is not None and _size(self.path) == len(old["files"]) * int(np.prod(self.shape)):
            before = {tuple(f): i for i, f in enumerate(old["files"])}
            pairs = [(i, before[tuple(f)]) for i, f in enumerate(files) if tuple(f) in before]
            if pairs:
                m = len(old["files"])
                old_data = np.memmap(self._file(), dtype=np.uint8, mode="r", shape=(m, *self.shape))
                old_filled = np.fromfile(base.with_suffix(".filled"), dtype=np.uint8, count=m)
                for i, j in pairs:
                    if old_filled[j] == 1:
                        data[i] = old_data[j]
                        filled[i] = 1
                del old_data
        data.flush()
        filled.flush()
        os.replace(tmp_data, self._file())
        os.replace(tmp_filled, base.with_suffix(".filled"))
        return data, filled

    def __getstate__(self) -> dict:  # for spawn-ed workers: a handle, not the pixels
        return {k: v for k, v in self.__dict__.items() if k not in ("_data", "_filled")}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        if self.mode == "memory":
            self._views()
        else:
            n = len(self.paths)
            path = self._file()
            self._data = np.memmap(path, dtype=np.uint8, mode="r+", shape=(n, *self.shape))
            self._filled = np.memmap(path.with_suffix(".filled"), dtype=np.uint8, mode="r+", shape=(n,))

    # -- access --------------------------------------------------------------------
    @property
    def filled_count(self) -> int:
        """How many slots hold their image."""
        return int(np.count_nonzero(self._filled))

    def is_filled(self, slot: int) -> bool:
        return bool(self._filled[slot])

    def fill(self, slot: int) -> None:
        """Decode and store one slot unless it is already filled."""
        if not self._filled[slot]:
            self._data[slot] = decode_uint8(self.paths[slot], self.spec).numpy()
            self._filled[slot] = 1  # after the pixels: readers trust only filled slots

    def get(self, slots) -> torch.Tensor:
        """``(B, C, size, size)`` uint8 images of the given slots (decoding the missing ones)."""
        idx = np.asarray(slots, dtype=np.int64)
        for slot in np.unique(idx[self._filled[idx] == 0]).tolist():
            self.fill(slot)
        return torch.from_numpy(np.ascontiguousarray(self._data[idx]))

    def __repr__(self) -> str:
        where = f", path={str(self.path)!r}" if self.path else ""
        return (f"ImageCache(images={len(self)}, shape={self.shape}, mode={self.mode!r}, "
                f"filled={self.filled_count}{where})")


def _budget(value) -> int:
    return memory_budget(value)


def _size(path: Path | None) -> int:
    try:
        return os.path.getsize(path) if path is not None else -1
    except OSError:
        return -1


def _read_index(path: Path, shape: tuple[int, ...]) -> dict | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if (not isinstance(data, dict) or data.get("format") != _FORMAT
            or data.get("shape") != list(shape) or not isinstance(data.get("files"), list)):
        return None
    return data


def _write_json(path: Path, data: dict) -> None:
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data))
    os.replace(tmp, path)


# --------------------------------------------------------------------------- fill / verify
class _FillTask(torch.utils.data.Dataset):
    """Dataset whose item ``i`` decodes (and caches) slot ``i``: ``(i, error message or "")``."""

    def __init__(self, store: FileDecoder) -> None:
        self.store = store

    def __len__(self) -> int:
        return len(self.store)

    def __getitem__(self, slot: int) -> tuple[int, str]:
        try:
            self.store.fill(slot)
        except CorruptImageError as exc:
            return slot, str(exc)
        return slot, ""


def _as_list(batch):
    return batch


def decode_all(store: FileDecoder, *, workers: int = 0) -> dict[int, str]:
    """Decode every slot of ``store`` once (filling an :class:`ImageCache`), in ``workers``
    DataLoader processes (0: in this process). Returns ``{slot: message}`` of the files
    that raised :class:`CorruptImageError`; other errors propagate."""
    task = _FillTask(store)
    if workers <= 0:
        results = (task[i] for i in range(len(task)))
    else:
        loader = torch.utils.data.DataLoader(task, batch_size=32, num_workers=workers,
                                             collate_fn=_as_list)
        results = (r for batch in loader for r in batch)
    return {slot: msg for slot, msg in results if msg}
