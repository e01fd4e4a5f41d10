"""FAISS index derived from the store, plus the template -> class map for class-collapse.

The index is ``faiss.IndexIDMap2(faiss.IndexFlatIP(dim))`` keyed by template id (exact
cosine search on unit vectors). It is never the source of truth: ``index.faiss`` +
``index.json`` are a snapshot that is reused on open only if it covers exactly the store's
last op seq, belongs to the same gallery uuid and its bytes match the recorded SHA-256;
otherwise the index is rebuilt from the store. Snapshot files are written to a tmp name
and ``os.replace``-d into place (index first, then the JSON that vouches for it).
Only FAISS's own binary format and JSON are written: nothing is pickled.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable
from pathlib import Path

import faiss
import numpy as np

from ..errors import DimensionMismatchError, EmptyClassError, InvalidInputError, MegaclassError

INDEX_NAME = "index.faiss"
INDEX_META = "index.json"
INDEX_TYPE = "IndexIDMap2(IndexFlatIP)"
_SNAPSHOT_VERSION = 1
_READ_CHUNK = 1 << 20
_FIRST_PASS_CAP = 4096  # neighbours per query in the first pass; short rows widen after


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


def as_unit_vectors(vectors, dim: int, *, allow_empty: bool = False) -> np.ndarray:
    """Validate embeddings and return them L2-normalised as a ``(n, dim)`` float32 array.

    Accepts numpy arrays, nested lists, or tensors (anything with ``.detach()``, converted
    via ``.detach().cpu().numpy()``). A single ``(dim,)`` vector is one row.

    Raises EmptyClassError (no rows), DimensionMismatchError (wrong dim), InvalidInputError
    (not numeric, not 1-D/2-D, NaN/inf, zero vector).

    Examples
    --------
    >>> as_unit_vectors([3.0, 4.0], dim=2)
    array([[0.6, 0.8]], dtype=float32)
    """
    return unit_rows(as_rows(vectors, dim, allow_empty=allow_empty))


def as_rows(vectors, dim: int, *, allow_empty: bool = False) -> np.ndarray:
    """First half of :func:`as_unit_vectors`: convert and check type and shape only."""
    if hasattr(vectors, "detach"):
        vectors = vectors.detach().cpu().numpy()
    try:
        arr = np.asarray(vectors)
    except (ValueError, TypeError) as exc:
        raise InvalidInputError(f"vectors are not a numeric array: {exc}") from exc
    if arr.dtype.kind not in "fiu":
        raise InvalidInputError(f"vectors must be numeric, got dtype {arr.dtype}")
    if arr.ndim == 1:
        arr = arr.reshape(1, -1) if arr.size else arr.reshape(0, dim)
    if arr.ndim != 2:
        raise InvalidInputError(f"vectors must be 1-D or 2-D (n, dim), got shape {arr.shape}")
    if arr.shape[1] != dim:
        raise DimensionMismatchError(f"expected vectors of dim {dim}, got dim {arr.shape[1]}")
    if arr.shape[0] == 0 and not allow_empty:
        raise EmptyClassError("no vectors given (need at least one template)")
    return arr


def unit_rows(arr: np.ndarray) -> np.ndarray:
    """Second half of :func:`as_unit_vectors`: finite, non-zero, L2-normalised float32."""
    arr = arr.astype(np.float64)
    finite = np.isfinite(arr)
    if not finite.all():
        rows = np.flatnonzero(~finite.all(axis=1)).tolist()
        kinds = [name for name, bad in (("NaN", np.isnan(arr).any()),
                                         ("inf", np.isinf(arr).any())) if bad]
        raise InvalidInputError(f"vectors contain {'/'.join(kinds)} (rows {rows[:10]})")
    norms = np.linalg.norm(arr, axis=1, keepdims=True)
    if not (norms > 0).all():
        rows = np.flatnonzero(norms[:, 0] <= 0).tolist()
        raise InvalidInputError(f"zero vector cannot be normalised (rows {rows[:10]})")
    return np.ascontiguousarray(arr / norms, dtype=np.float32)


def unit_rows_of_items(labels: list[str], rows: list[np.ndarray]) -> np.ndarray:
    """:func:`unit_rows` of many items' rows at once; on failure, name the first bad item."""
    if not rows:
        return np.empty((0, 0), np.float32)
    try:
        return unit_rows(np.concatenate(rows))
    except InvalidInputError:
        for i, r in enumerate(rows):
            try:
                unit_rows(r)
            except InvalidInputError as exc:
                raise type(exc)(f"item {i} ({labels[i]!r}): {exc}") from exc
        raise


class ClassIndex:
    """Template vectors in FAISS + a dense ``template id -> class id`` array.

    ``class id`` is the store's ``classes.id``; ``-1`` marks template ids that are absent.
    """

    def __init__(self, dim: int, index: faiss.Index | None = None):
        self.dim = dim
        self.index = index if index is not None else faiss.IndexIDMap2(faiss.IndexFlatIP(dim))
        self._tid2cid = np.full(1024, -1, dtype=np.int64)
        self._counts: dict[int, int] = {}
        self._max_per_class = 0
        self._max_stale = False

    @property
    def ntotal(self) -> int:
        return int(self.index.ntotal)

    # ------------------------------------------------------------------ map upkeep
    def set_map(self, tids: np.ndarray, cids: np.ndarray) -> None:
        """Reset the template -> class map (from the store, on open)."""
        size = max(1024, int(tids.max()) + 1 if len(tids) else 0)
        self._tid2cid = np.full(size, -1, dtype=np.int64)
        self._tid2cid[tids] = cids
        uniq, counts = np.unique(cids, return_counts=True)
        self._counts = dict(zip(uniq.tolist(), counts.tolist(), strict=True))
        self._max_per_class = int(counts.max()) if len(counts) else 0
        self._max_stale = False

    def max_per_class(self) -> int:
        if self._max_stale:
            self._max_per_class = max(self._counts.values(), default=0)
            self._max_stale = False
        return self._max_per_class

    def add(self, tids: np.ndarray, cids: np.ndarray, vecs: np.ndarray) -> None:
        """Add templates (ids from the store, their class ids, unit float32 rows)."""
        if not len(tids):
            return
        top = int(tids.max())
        if top >= len(self._tid2cid):
            grown = np.full(max(top + 1, 2 * len(self._tid2cid)), -1, dtype=np.int64)
            grown[: len(self._tid2cid)] = self._tid2cid
            self._tid2cid = grown
        self.index.add_with_ids(np.ascontiguousarray(vecs, dtype=np.float32), tids)
        self._tid2cid[tids] = cids
        uniq, counts = np.unique(cids, return_counts=True)
        for c, n in zip(uniq.tolist(), counts.tolist(), strict=True):
            total = self._counts.get(c, 0) + n
            self._counts[c] = total
            self._max_per_class = max(self._max_per_class, total)  # an upper bound if stale

    def remove(self, tids: np.ndarray) -> None:
        """Remove templates by id; a class disappears when none of its templates are left."""
        if not len(tids):
            return
        tids = np.ascontiguousarray(tids, dtype=np.int64)
        cids = self._tid2cid[tids]
        self.index.remove_ids(tids)
        self._tid2cid[tids] = -1
        uniq, counts = np.unique(cids[cids >= 0], return_counts=True)
        for c, n in zip(uniq.tolist(), counts.tolist(), strict=True):
            left = self._counts.get(c, 0) - n
            if left > 0:
                self._counts[c] = left
            else:
                self._counts.pop(c, None)
        self._max_stale = True

    # ------------------------------------------------------------------ search
    def search(self, queries: np.ndarray, k: int) -> list[tuple[np.ndarray, np.ndarray]]:
        """Best ``k`` distinct classes per query row: ``[(class ids, scores), ...]``.

        Searches ``k * max templates per class`` template neighbours (which always holds
        ``k`` distinct classes when the index has them; capped at 4096 to bound memory),
        keeps each class's best score, and doubles the search for rows that came back short.
        """
        nq = len(queries)
        out: list[tuple[np.ndarray, np.ndarray]] = [(np.empty(0, np.int64), np.empty(0))] * nq
        total = self.ntotal
        if total == 0 or nq == 0:
            return out
        nclasses = len(self._counts)
        kk = min(total, max(k, min(k * max(1, self.max_per_class()), _FIRST_PASS_CAP)))
        rows = np.arange(nq)
        while len(rows):
            scores, ids = self.index.search(np.ascontiguousarray(queries[rows]), kk)
            short = []
            for j, r in enumerate(rows):
                cids, best = self._collapse(ids[j], scores[j], k)
                out[r] = (cids, best)
                if len(cids) < min(k, nclasses) and kk < total:
                    short.append(r)
            rows = np.asarray(short, dtype=np.int64)
            kk = min(total, kk * 2)
        return out

    def _collapse(self, ids: np.ndarray, scores: np.ndarray, k: int):
        keep = ids >= 0
        ids, scores = ids[keep], scores[keep]
        cids = self._tid2cid[ids]
        _, first = np.unique(cids, return_index=True)  # FAISS IP results: best first
        first = np.sort(first)[:k]
        return cids[first], scores[first].astype(np.float64)

    def template_ids(self) -> np.ndarray:
        """Ids of the templates the FAISS index holds (int64, index order)."""
        return faiss.vector_to_array(self.index.id_map).astype(np.int64)

    # ------------------------------------------------------------------ build / snapshot
    @classmethod
    def build(cls, dim: int, chunks: Iterable[tuple[np.ndarray, np.ndarray]]) -> ClassIndex:
        """Build from ``(template ids, vectors)`` chunks read from the store."""
        self = cls(dim)
        for tids, vecs in chunks:
            self.index.add_with_ids(np.ascontiguousarray(vecs, dtype=np.float32), tids)
        return self

    def save(self, directory: Path, *, gallery_uuid: str, seq: int, cipher=None) -> None:
        """Write ``index.faiss`` + ``index.json`` atomically (tmp file + ``os.replace``).

        With a ``cipher`` (encrypted gallery) the FAISS bytes are sealed with AES-256-GCM,
        bound to the gallery uuid and op seq.
        """
        data_path, meta_path = directory / INDEX_NAME, directory / INDEX_META
        tmp_data, tmp_meta = data_path.with_suffix(".faiss.tmp"), meta_path.with_suffix(".tmp")
        h = hashlib.sha256()
        with open(tmp_data, "wb") as f:
            if cipher is not None:
                blob = cipher.encrypt(faiss.serialize_index(self.index).tobytes(),
                                      _snapshot_aad(gallery_uuid, seq))
                f.write(blob)
                h.update(blob)
            else:

                def _write(block: bytes) -> None:
                    f.write(block)
                    h.update(block)

                writer = faiss.PyCallbackIOWriter(_write)
                faiss.write_index(self.index, writer)
                del writer  # flushes its buffer through _write
            f.flush()
            os.fsync(f.fileno())
        meta = {"version": _SNAPSHOT_VERSION, "uuid": gallery_uuid, "seq": int(seq),
                "dim": self.dim, "ntotal": self.ntotal, "type": INDEX_TYPE,
                "encrypted": cipher is not None, "sha256": h.hexdigest()}
        with open(tmp_meta, "w", encoding="utf-8") as f:
            json.dump(meta, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp_data, data_path)
        os.replace(tmp_meta, meta_path)
        _fsync_dir(directory)

    @classmethod
    def load(cls, directory: Path, *, gallery_uuid: str, seq: int, dim: int,
             template_ids: np.ndarray, cipher=None) -> ClassIndex | None:
        """The snapshot if it is current and intact, else ``None`` (caller rebuilds)."""
        data_path, meta_path = directory / INDEX_NAME, directory / INDEX_META
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
            if not (isinstance(meta, dict) and meta.get("version") == _SNAPSHOT_VERSION
                    and meta.get("uuid") == gallery_uuid and meta.get("seq") == seq
                    and meta.get("dim") == dim and meta.get("ntotal") == len(template_ids)
                    and bool(meta.get("encrypted", False)) == (cipher is not None)):
                return None
            if _sha256(data_path) != meta.get("sha256"):
                return None
            if cipher is not None:
                plain = cipher.decrypt(data_path.read_bytes(), _snapshot_aad(gallery_uuid, seq))
                index = faiss.deserialize_index(np.frombuffer(plain, dtype=np.uint8))
            else:
                index = faiss.read_index(str(data_path))
        except (OSError, ValueError, RuntimeError, MegaclassError):
            return None
        if not (isinstance(index, faiss.IndexIDMap2) and index.d == dim
                and isinstance(faiss.downcast_index(index.index), faiss.IndexFlatIP)):
            return None
        ids = np.sort(faiss.vector_to_array(index.id_map).astype(np.int64))
        if not np.array_equal(ids, np.sort(template_ids)):
            return None
        return cls(dim, index)


def _snapshot_aad(gallery_uuid: str, seq: int) -> bytes:
    return f"megaclass-index:{gallery_uuid}:{int(seq)}".encode()
