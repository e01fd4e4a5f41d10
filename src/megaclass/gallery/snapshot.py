"""The index snapshot on disk: ``index.faiss`` (FAISS's own binary format, sealed with
AES-256-GCM in an encrypted gallery) and ``index.json`` (gallery uuid, the op seq it
covers, spec, tuning and the SHA-256 of ``index.faiss``).

Both are written under temporary names, fsynced and renamed, so a crash leaves the old
snapshot or the new one. A snapshot of another gallery, of another dim or spec, or
whose bytes do not match its SHA-256 (or fail authentication) is not loaded: the
gallery rebuilds its index from the store. Nothing is pickled.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import faiss
import numpy as np

from ..errors import MegaclassError
from .faiss_api import callback_writer

INDEX_NAME = "index.faiss"
INDEX_META = "index.json"
SNAPSHOT_VERSION = 2
_READ_CHUNK = 1 << 20


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(_READ_CHUNK):
            h.update(block)
    return h.hexdigest()


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # e.g. platforms without directory fds
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _aad(gallery_uuid: str, seq: int) -> bytes:
    return f"megaclass-index:{gallery_uuid}:{int(seq)}".encode()


def write_snapshot(index: faiss.Index, directory: Path, meta: dict, *, gallery_uuid: str, seq: int,
                   cipher=None) -> None:
    """Write ``index`` and ``meta`` (plus version, uuid, seq, SHA-256) atomically."""
    data_path, meta_path = directory / INDEX_NAME, directory / INDEX_META
    tmp_data, tmp_meta = data_path.with_suffix(".faiss.tmp"), meta_path.with_suffix(".tmp")
    h = hashlib.sha256()
    with open(tmp_data, "wb") as f:
        if cipher is not None:
            blob = cipher.encrypt(faiss.serialize_index(index).tobytes(), _aad(gallery_uuid, seq))
            f.write(blob)
            h.update(blob)
        else:

            def _write(block: bytes) -> None:
                f.write(block)
                h.update(block)

            writer = callback_writer(_write)
            faiss.write_index(index, writer)
            del writer  # flushes its buffer through _write
        f.flush()
        os.fsync(f.fileno())
    meta = {"version": SNAPSHOT_VERSION, "uuid": gallery_uuid, "seq": int(seq), **meta,
            "vectors": int(index.ntotal), "encrypted": cipher is not None, "sha256": h.hexdigest()}
    with open(tmp_meta, "w", encoding="utf-8") as mf:
        json.dump(meta, mf)
        mf.flush()
        os.fsync(mf.fileno())
    os.replace(tmp_data, data_path)
    os.replace(tmp_meta, meta_path)
    _fsync_dir(directory)


def read_snapshot(directory: Path, *, gallery_uuid: str, dim: int, requested: str,
                  cipher=None) -> tuple[faiss.IndexIDMap2, dict] | None:
    """``(index, meta)`` if the snapshot is this gallery's and intact, else ``None``."""
    data_path, meta_path = directory / INDEX_NAME, directory / INDEX_META
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        if not (isinstance(meta, dict) and meta.get("version") == SNAPSHOT_VERSION
                and meta.get("uuid") == gallery_uuid and meta.get("dim") == dim
                and meta.get("requested") == requested
                and bool(meta.get("encrypted", False)) == (cipher is not None)):
            return None
        seq = int(meta["seq"])
        if _sha256(data_path) != meta.get("sha256"):
            return None
        if cipher is not None:
            plain = cipher.decrypt(data_path.read_bytes(), _aad(gallery_uuid, seq))
            index = faiss.deserialize_index(np.frombuffer(plain, dtype=np.uint8))
        else:
            index = faiss.read_index(str(data_path))
    except (OSError, ValueError, KeyError, TypeError, RuntimeError, MegaclassError):
        return None
    if not (isinstance(index, faiss.IndexIDMap2) and index.d == dim
            and index.ntotal == meta.get("vectors")):
        return None
    if meta.get("spec") == "Flat" and not isinstance(faiss.downcast_index(index.index),
                                                     faiss.IndexFlatIP):
        return None
    return index, meta
