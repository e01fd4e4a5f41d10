"""An opt-in, bounded store of recent real query vectors, used only to re-tune the index.

Real queries are the best tuning probes (see :mod:`megaclass.gallery.probes`), but they
are biometric-grade data: the reservoir is off unless asked for
(:meth:`Gallery.keep_queries <megaclass.gallery.Gallery.keep_queries>`), holds at most
``capacity`` vectors (the most recent; older ones are overwritten in place), is written
to ``queries.reservoir`` sealed with AES-256-GCM under the gallery key when the gallery
is encrypted (bound to the gallery uuid), is never returned by any API or export, and is
zeroed and deleted by :meth:`QueryReservoir.drop`. No pickle: a JSON header and raw
float32 bytes.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from ..errors import ConfigError, EncryptionKeyError, NotAGalleryError

FILE_NAME = "queries.reservoir"
MAGIC = b"MCQRES1\n"
MAX_CAPACITY = 100_000


class QueryReservoir:
    """Ring buffer of the last ``capacity`` query rows, persisted next to the gallery.

    Parameters
    ----------
    directory : the gallery folder. dim : vector dimension. capacity : rows kept (1 to
    :data:`MAX_CAPACITY`). cipher : the gallery's cipher (None for a clear gallery).
    gallery_uuid : binds the sealed file to its gallery. encrypted : whether the gallery
    is encrypted (without ``cipher`` the reservoir is refused: EncryptionKeyError).

    Examples
    --------
    >>> r = QueryReservoir(tmp, 4, 2, cipher=None, gallery_uuid="u")   # doctest: +SKIP
    >>> r.add(np.eye(4, dtype=np.float32)[:3]); len(r)                 # doctest: +SKIP
    2
    """

    def __init__(self, directory: Path, dim: int, capacity: int, *, cipher, gallery_uuid: str,
                 encrypted: bool):
        self.check_capacity(capacity)
        if encrypted and cipher is None:
            raise EncryptionKeyError("this gallery is encrypted: a query reservoir needs its key "
                                     "(queries are never written in clear)")
        self.path = Path(directory) / FILE_NAME
        self.dim, self.capacity = dim, capacity
        self._cipher, self._aad = cipher, f"{gallery_uuid}/queries".encode()
        self._rows = np.zeros((capacity, dim), np.float32)
        self._filled = self._next = 0
        self._dirty = False
        if self.path.exists():
            self._load()

    @staticmethod
    def check_capacity(capacity) -> int:
        if type(capacity) is not int or not 1 <= capacity <= MAX_CAPACITY:
            raise ConfigError(f"query reservoir capacity must be an int in 1..{MAX_CAPACITY:,}, "
                              f"got {capacity!r}")
        return capacity

    def __len__(self) -> int:
        return self._filled

    def add(self, rows: np.ndarray) -> None:
        """Keep ``rows`` (unit float32 vectors), overwriting the oldest past capacity."""
        rows = rows[-self.capacity:]
        for chunk in np.array_split(rows, [self.capacity - self._next]) if len(rows) else ():
            if not len(chunk):
                continue
            self._rows[self._next: self._next + len(chunk)] = chunk
            self._next = (self._next + len(chunk)) % self.capacity
            self._filled = min(self.capacity, self._filled + len(chunk))
        self._dirty = self._dirty or len(rows) > 0

    def queries(self) -> np.ndarray:
        """The kept rows (a copy), for re-tuning inside the gallery only."""
        return self._rows[: self._filled].copy()

    def save(self) -> None:
        """Write the file atomically (sealed when the gallery is encrypted)."""
        if not self._dirty:
            return
        payload = self._rows[: self._filled].tobytes()
        header = {"dim": self.dim, "rows": self._filled, "next": self._next,
                  "sealed": self._cipher is not None}
        body = self._cipher.encrypt(payload, self._aad) if self._cipher is not None else payload
        tmp = self.path.with_suffix(".tmp")
        with open(tmp, "wb") as f:
            f.write(MAGIC + json.dumps(header).encode() + b"\n" + body)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o600)
        os.replace(tmp, self.path)
        self._dirty = False

    def _load(self) -> None:
        raw = self.path.read_bytes()
        try:
            if not raw.startswith(MAGIC):
                raise ValueError("bad magic")
            head, body = raw[len(MAGIC):].split(b"\n", 1)
            header = json.loads(head)
        except ValueError as exc:
            raise NotAGalleryError(f"{self.path}: damaged query reservoir ({exc}); "
                                   "drop it with Gallery.drop_queries()") from None
        if header.get("sealed") and self._cipher is None:
            raise EncryptionKeyError(f"{self.path}: the query reservoir is sealed; "
                                     "open the gallery with its key")
        if not header.get("sealed") and self._cipher is not None:
            raise EncryptionKeyError(f"{self.path}: a query reservoir in clear inside an encrypted "
                                     "gallery is refused; drop it with Gallery.drop_queries()")
        payload = self._cipher.decrypt(body, self._aad) if self._cipher is not None else body
        rows = np.frombuffer(payload, np.float32).reshape(-1, int(header["dim"]))
        if rows.shape[1] != self.dim:
            raise NotAGalleryError(f"{self.path}: query reservoir of dim {rows.shape[1]}, gallery {self.dim}")
        keep = rows[-self.capacity:]
        self._rows[: len(keep)] = keep
        self._filled = len(keep)
        self._next = int(header.get("next", 0)) % self.capacity if len(rows) <= self.capacity else 0

    def drop(self) -> None:
        """Forget every kept query: zero the buffer and delete the file."""
        self._rows[:] = 0
        self._filled = self._next = 0
        self._dirty = False
        self.path.unlink(missing_ok=True)
        self.path.with_suffix(".tmp").unlink(missing_ok=True)
