"""The class id -> label map a gallery keeps in memory, compact enough for 10M+ classes.

Labels are UTF-8 bytes in one growing buffer, found by two numpy arrays indexed by
class id (start offset, byte length; length -1 = no such class): ~12 bytes plus the
label per class. Measured with 15-character labels, per million classes: 26 MiB, where
a ``dict[int, str]`` plus its reverse took 96 MiB for the two tables alone, plus ~90 MiB
for the ``str`` and ``int`` objects they keep alive (~1.9 GB at 10M classes). Label ->
class id lookups go to SQLite, which indexes labels anyway.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np


class LabelTable:
    """Class ids to labels; rows are added in any order, removed ones are blanked."""

    def __init__(self) -> None:
        self._start = np.zeros(1024, dtype=np.int64)
        self._len = np.full(1024, -1, dtype=np.int32)
        self._buf = bytearray()
        self._n = 0

    @classmethod
    def from_chunks(cls, chunks: Iterable[list[tuple[int, str]]]) -> LabelTable:
        """Build from ``(class id, label)`` rows, read in chunks (never all rows at once)."""
        table = cls()
        for rows in chunks:
            table.update([r[0] for r in rows], [r[1] for r in rows])
        return table

    def __len__(self) -> int:
        return self._n

    def get(self, cid: int) -> str:
        """The label of class ``cid`` (KeyError if there is none)."""
        n = int(self._len[cid]) if 0 <= cid < len(self._len) else -1
        if n < 0:
            raise KeyError(cid)
        s = int(self._start[cid])
        return self._buf[s:s + n].decode()

    def update(self, cids: list[int], labels: list[str]) -> None:
        """Set the labels of (new or existing) classes; an existing class keeps its label."""
        if not cids:
            return
        ids = np.asarray(cids, dtype=np.int64)
        if int(ids.max()) >= len(self._len):
            size = max(int(ids.max()) + 1, 2 * len(self._len))
            self._start = np.concatenate([self._start, np.zeros(size - len(self._start), np.int64)])
            self._len = np.concatenate([self._len, np.full(size - len(self._len), -1, np.int32)])
        fresh = self._len[ids] < 0
        if not fresh.any():
            return
        ids = ids[fresh]
        data = [label.encode() for label, new in zip(labels, fresh.tolist(), strict=True) if new]
        sizes = np.fromiter((len(b) for b in data), dtype=np.int64, count=len(data))
        self._start[ids] = len(self._buf) + np.cumsum(sizes) - sizes
        self._len[ids] = sizes
        self._buf += b"".join(data)
        self._n += len(ids)

    def remove(self, cids: list[int]) -> None:
        """Forget classes; their label bytes are overwritten with zeros."""
        for cid in cids:
            n = int(self._len[cid]) if 0 <= cid < len(self._len) else -1
            if n < 0:
                continue
            s = int(self._start[cid])
            self._buf[s:s + n] = bytes(n)
            self._len[cid] = -1
            self._n -= 1

    def labels(self) -> list[str]:
        """All labels in class id order (enrollment order)."""
        buf = bytes(self._buf)
        return [buf[s:s + n].decode() for s, n in zip(self._start[self._len >= 0].tolist(),
                                                      self._len[self._len >= 0].tolist(), strict=True)]

    def memory_bytes(self) -> int:
        return int(self._start.nbytes + self._len.nbytes + len(self._buf))
