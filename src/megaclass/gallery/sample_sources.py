"""Where a re-embed reads each class's original samples, and samples retained at enrollment.

A sample source answers ``labels()`` (the classes it has) and ``batches(labels)`` (one
ready image batch per label, converted by the *new* model's input contract).

* :class:`FolderSamples`: a folder of class folders (``root/<label>/<image>``, as
  ``enroll --from`` reads it);
* :class:`GlyphSamples`: built-in glyph classes ``glyph-<id>`` drawn as ``enroll --from
  glyphs:A-B`` drew them (same ``per_class`` and ``seed``);
* :class:`RetainedSamples`: the samples kept in the gallery by ``enroll --retain-samples``
  (:func:`retain`): image files as their original bytes, arrays as ``.npy`` (no pickle),
  sealed with the gallery key (AES-256-GCM, bound to the gallery and row) when it has one.

Retained samples are written in their own commit right after the enroll's; a crash in
between leaves the class without retained samples, which a re-embed then names as missing.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np

from ..errors import ConfigError, InvalidInputError

RETAINED = "retained"  # the source name of samples kept in the gallery
_NPY_MAGIC = b"\x93NUMPY"


class FolderSamples:
    """Class folders under ``root``; a class's images are read when it is embedded."""

    def __init__(self, root, spec, *, skip_bad_files: bool = False) -> None:
        from ..data.folder import ImageFolderSource

        self.root = Path(root)
        if not self.root.is_dir():
            raise InvalidInputError(f"re-embed source {self.root} is not a folder (nor glyphs:A-B, nor "
                                    f"{RETAINED!r})")
        self._src = ImageFolderSource(self.root, spec=spec, cache=False, skip_bad_files=skip_bad_files)
        self._index = {name: i for i, name in enumerate(self._src.class_names)}
        self.spec = spec

    def describe(self) -> str:
        return str(self.root)

    def labels(self) -> set[str]:
        return set(self._index)

    def batches(self, labels: list[str]) -> list:
        from ..data.images import to_batch

        return [to_batch(self._src.class_paths(self._index[lb]), spec=self.spec) for lb in labels]


class GlyphSamples:
    """Built-in glyph classes ``glyph-<id>``, ``per_class`` drawings each from stream ``seed``."""

    def __init__(self, ids, spec, *, per_class: int = 5, seed: int = 1) -> None:
        self.ids, self.spec, self.per_class, self.seed = np.asarray(ids), spec, per_class, seed
        self._id = {f"glyph-{int(i)}": int(i) for i in self.ids}

    def describe(self) -> str:
        return f"glyphs:{int(self.ids.min())}-{int(self.ids.max()) + 1}" if len(self.ids) else "glyphs:"

    def labels(self) -> set[str]:
        return set(self._id)

    def batches(self, labels: list[str]) -> list:
        from ..data.glyphs import GlyphSource
        from ..data.images import to_batch

        ids = np.asarray([self._id[lb] for lb in labels])
        images, _ = GlyphSource.batch(ids, self.per_class, seed=self.seed, size=self.spec.size)
        images = to_batch(images, spec=self.spec)
        return [images[k * self.per_class: (k + 1) * self.per_class] for k in range(len(labels))]


class RetainedSamples:
    """The samples :func:`retain` kept in the gallery (classes changed since are left out)."""

    def __init__(self, gallery, spec) -> None:
        self.gallery, self.spec = gallery, spec

    def describe(self) -> str:
        return f"samples retained in {self.gallery.path}"

    def labels(self) -> set[str]:
        with self.gallery.state.session() as store:
            rows = store.connection.execute(
                "SELECT DISTINCT c.label FROM samples s JOIN classes c ON c.id = s.class_id "
                "WHERE s.updated_at = c.updated_at").fetchall()
        return {r[0] for r in rows}

    def batches(self, labels: list[str]) -> list:
        from ..data.images import to_batch

        out = []
        with self.gallery.state.session() as store:
            for lb in labels:
                rows = store.connection.execute(
                    "SELECT s.id, s.data FROM samples s JOIN classes c ON c.id = s.class_id "
                    "WHERE c.label = ? ORDER BY s.id", (lb,)).fetchall()
                out.append(to_batch([_decode(store, i, b) for i, b in rows], spec=self.spec))
        return out


def _aad(store, sample_id: int) -> bytes:
    return f"megaclass-sample:{store.uuid}:".encode() + int(sample_id).to_bytes(8, "little")


def _decode(store, sample_id: int, blob: bytes):
    from PIL import Image

    if store.cipher is not None:
        blob = store.cipher.decrypt(blob, _aad(store, sample_id))
    if blob.startswith(_NPY_MAGIC):
        return np.load(io.BytesIO(blob), allow_pickle=False)
    return Image.open(io.BytesIO(blob))


def encode_sample(item) -> bytes:
    """What :func:`retain` keeps of one sample: an image file's bytes, or an array as ``.npy``."""
    if isinstance(item, str | os.PathLike):
        return Path(item).read_bytes()
    arr = item.numpy() if hasattr(item, "numpy") else np.asarray(item)
    if arr.dtype.kind == "f" and arr.size and 0.0 <= float(arr.min()) and float(arr.max()) <= 1.0:
        arr = np.round(arr * 255).astype(np.uint8)  # [0, 1] drawings: 8 bits are what an image holds
    if arr.ndim == 3 and arr.shape[0] in (1, 3):  # (C, H, W) -> (H, W[, C]), as an image array
        arr = arr[0] if arr.shape[0] == 1 else np.moveaxis(arr, 0, -1)
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(arr), allow_pickle=False)
    return buf.getvalue()


def retain(gallery, items) -> int:
    """Keep ``(label, [sample, ...])`` samples of enrolled classes in the gallery (replacing
    what a class had), for a later re-embed; one commit. Returns the samples stored."""
    gallery.state.check_writable()
    total = 0
    with gallery.state.session() as store, store.transaction() as c:
        for label, samples in items:
            row = c.execute("SELECT id, updated_at FROM classes WHERE label = ?", (label,)).fetchone()
            if row is None:
                raise InvalidInputError(f"cannot retain samples of {label!r}: it is not enrolled")
            cid, updated = row
            c.execute("DELETE FROM samples WHERE class_id = ?", (cid,))
            top = c.execute("SELECT COALESCE(MAX(seq), 0) FROM sqlite_sequence "
                            "WHERE name = 'samples'").fetchone()[0]
            top = max(int(top), int(c.execute("SELECT COALESCE(MAX(id), 0) FROM samples").fetchone()[0]))
            rows = []
            for k, item in enumerate(samples, start=top + 1):
                blob = encode_sample(item)
                if store.cipher is not None:
                    blob = store.cipher.encrypt(blob, _aad(store, k))
                rows.append((k, cid, updated, blob))
            c.executemany("INSERT INTO samples (id, class_id, updated_at, data) VALUES (?, ?, ?, ?)", rows)
            total += len(rows)
        c.execute("INSERT OR REPLACE INTO meta VALUES ('retain_samples', 'true')")
    return total


def open_samples(source, gallery, spec, *, skip_bad_files: bool = False):
    """The sample source a re-embed reads: an object with ``labels``/``batches``, a folder,
    ``"glyphs:A-B"`` (5 drawings per class, stream 1: ``enroll --from``'s defaults; give a
    :class:`GlyphSamples` for others), ``"retained"``, or None (retained samples if the
    gallery kept any, else ConfigError naming both ways)."""
    if hasattr(source, "labels") and hasattr(source, "batches"):
        return source
    if source is None or source == RETAINED:
        if not gallery.get_setting("retain_samples"):
            raise ConfigError(f"no source of samples for re-embedding {gallery.path}: give --from "
                              "(a folder of class folders, or glyphs:A-B), or enroll with "
                              "--retain-samples so the gallery keeps them")
        return RetainedSamples(gallery, spec)
    text = os.fspath(source)
    from ..data.spec import parse_glyph_range

    ids = parse_glyph_range(text)
    if ids is not None:
        return GlyphSamples(ids, spec)
    return FolderSamples(text, spec, skip_bad_files=skip_bad_files)
