""":class:`JournaledWrites`: a Milvus gallery's writes made all-or-nothing for readers by
the write journal of :mod:`.records` (begin, insert, commit, delete replaced rows, end),
with roll-back of a failed write, roll-forward of a committed one, and recovery of writes
a crash left open. Semantics: the package docstring (:mod:`megaclass.gallery.milvus`)."""

from __future__ import annotations

import time
from typing import TypedDict

import numpy as np

from ...errors import DuplicateLabelError, UnknownLabelError
from .errors import MilvusUnavailableError
from .link import Link
from .records import lit, lits

INSERT_ROWS = 2000  # rows per insert request (well under gRPC's 64 MiB at dim 4096)
MODEL_KEY = "model_fingerprint"


class Commit(TypedDict):
    """A write's commit record: ``labels`` whose rows from writes other than ``keep`` go."""

    labels: list[str]
    keep: int


class JournaledWrites:
    """The write path of one gallery, on its :class:`~.link.Link` (callers hold
    ``link.lock`` and have checked that the gallery is writable)."""

    def __init__(self, link: Link):
        self.link = link
        self._unresolved: set[int] = set()  # failed writes of this client not yet rolled back
        self._last_w = 0

    def _new_w(self) -> int:
        self._last_w = max(time.time_ns(), self._last_w + 1)
        return self._last_w

    def present(self, labels: list[str]) -> list[str]:
        """Which of ``labels`` are enrolled (visible)."""
        found: list[str] = []
        for i in range(0, len(labels), 1000):
            chunk = labels[i:i + 1000]
            rows = self.link.query(self.link.visible(f"head == true and label in {lits(chunk)}"), ["label"])
            found += [r["label"] for r in rows]
        return found

    def enroll(self, labels, vecs, counts, metas, replace: bool) -> int:
        """Store classes ``labels`` (``counts[i]`` rows of ``vecs`` each) as one write."""
        self.resolve_own()
        replaced = self.present(labels)
        if replaced and not replace:
            raise DuplicateLabelError(f"label {replaced[0]!r} is already enrolled "
                                      f"({len(replaced)} of the batch; use replace=True)")
        owner = np.repeat(np.arange(len(labels)), counts)
        first = np.concatenate([[0], np.cumsum(counts)[:-1]])
        rows = [(labels[c], metas[c], i == first[c]) for i, c in enumerate(owner.tolist())]
        self.write(labels, vecs, rows, replaced=replaced)
        return int(len(vecs))

    def add(self, label: str, vecs: np.ndarray, meta: dict) -> int:
        self.resolve_own()
        self.write([label], vecs, [(label, meta, False)] * len(vecs), replaced=[])
        return int(len(vecs))

    def erase(self, label: str) -> int:
        """Hide the class at once (a commit record), delete its rows, end the write."""
        self.resolve_own()
        n = self.link.count(self.link.visible(f"label == {lit(label)}"))
        if not n:
            raise UnknownLabelError(f"label {label!r} is not enrolled")
        w = self._new_w()
        try:
            self.link.records.mark_commit(w, [label], keep=0)  # hidden from here on
        except Exception:
            self._unresolved.add(w)
            raise
        self._finish(w, {"labels": [label], "keep": 0})
        return n

    def write(self, labels, vecs, rows, replaced) -> int:
        """Journal, insert, (commit and delete replaced rows), end: see :mod:`.records`."""
        link = self.link
        w, model = self._new_w(), link.records.setting(MODEL_KEY) or ""
        link.records.begin(w, labels)
        try:
            for s in range(0, len(vecs), INSERT_ROWS):
                data = [{"label": lb, "vector": v, "meta": m, "model": model, "w": w, "seq": s + j,
                         "head": bool(h)}
                        for j, ((lb, m, h), v) in enumerate(zip(rows[s:s + INSERT_ROWS],
                                                                vecs[s:s + INSERT_ROWS].tolist(),
                                                                strict=True))]
                link.call("insert templates", link.client.insert, link.name, data)
            commit: Commit | None = None
            if replaced:
                commit = Commit(labels=list(replaced), keep=w)
                link.records.mark_commit(w, commit["labels"], keep=w)
        except Exception as exc:
            self._rollback_or_remember(w, exc)
            raise
        self._finish(w, commit)
        return w

    def _finish(self, w: int, commit: Commit | None) -> None:
        """Roll a committed write forward to its end (a failure leaves it for recovery)."""
        try:
            if commit is not None:
                self._delete_replaced(commit)
            self.link.records.end(w)
            self.link.fence()
        except Exception as exc:
            if commit is not None:  # committed: readers see the new state; recovery finishes it
                self._unresolved.add(w)
                return
            self._rollback_or_remember(w, exc)
            raise

    def _delete_replaced(self, commit: Commit) -> None:
        link = self.link
        link.call("delete rows", link.client.delete, link.name,
                  filter=f"label in {lits(commit['labels'])} and w != {int(commit['keep'])}")

    def _rollback_or_remember(self, w: int, exc: Exception) -> None:
        """Undo a failed write now, or (server unreachable) remember it: it stays hidden and
        is rolled back by this client's next write."""
        if isinstance(exc, MilvusUnavailableError):  # do not wait a second timeout for nothing
            self._unresolved.add(w)
            return
        try:
            self.recover_one(w, None)
        except Exception:  # noqa: BLE001
            self._unresolved.add(w)

    def recover_one(self, w: int, commit: Commit | None) -> None:
        """Roll write ``w`` back (no commit record) or forward (with one), then end it."""
        link = self.link
        if commit is None:
            link.call("roll back a write", link.client.delete, link.name, filter=f"w == {w}")
        else:
            self._delete_replaced(commit)
        link.records.end(w)
        link.fence()

    def resolve_own(self) -> None:
        """Finish this client's earlier failed writes before a new one."""
        if self._unresolved:
            writes = self.link.records.open_writes()
            for w in sorted(self._unresolved):
                if w in writes:
                    self.recover_one(w, writes[w]["commit"])
                self._unresolved.discard(w)

    def recover(self, expired_only: bool) -> list[int]:
        """Finish or roll back open writes (all, or those whose lease expired)."""
        done = []
        for w, e in sorted(self.link.records.open_writes().items()):
            if expired_only and e["commit"] is None and e["expires"] > time.time():
                continue
            self.recover_one(w, e["commit"])
            done.append(w)
        return done
