"""The one shape every system of ``megaclass bench gallery`` runs in.

A runner is ``run(data: BenchData) -> dict``: it builds its index from ``data.tpl``,
fits its search knob to recall@1 :data:`~megaclass.gallery.tuning.TARGET_RECALL`
against exact search with the gallery's own fitting (:func:`fit`), measures with
:func:`speed`, reopens what it saved, and returns :func:`row`. Imports stay inside the
functions: a system's process loads only its own libraries (its peak RSS is its own).
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass
class BenchData:
    """What a runner gets: templates (row ``t * classes + c``, memory-mapped), the class of
    each row, mated probes, their exact best class (the recall truth), a work folder and
    the number of single-query latency samples."""

    tpl: np.ndarray
    owner: np.ndarray
    mated: np.ndarray
    truth: np.ndarray
    work: Path
    single: int


Runner = Callable[[BenchData], dict]

_LAST_PRED: list[np.ndarray] = []  # each system's last predictions (at its final knobs)


def last_predictions() -> np.ndarray | None:
    return _LAST_PRED[-1] if _LAST_PRED else None


def forget_predictions() -> None:
    _LAST_PRED.clear()


def recall(pred_cls: np.ndarray, truth: np.ndarray) -> float:
    """Recall@1 against exact search; remembers the predictions for the accuracy."""
    _LAST_PRED.append(np.asarray(pred_cls))
    return float(np.mean(pred_cls == truth))


def fit(set_knobs: Callable[[int, int | None], None], search_cls, d: BenchData, start: int,
        limit: int, k_factors: Sequence[int] | None = None) -> tuple[int, int | None, float]:
    """The gallery's own knob fitting (:func:`megaclass.gallery.tuning.fit_knobs`) on the
    mated probes: the smallest knob from ``start`` (up to ``limit``) whose recall@1 reaches
    the target, raising the re-ranked candidates through ``k_factors`` when needed.
    ``set_knobs(knob, k_factor)`` holds the system at a trial; returns the choice."""
    from megaclass.gallery.tuning import TARGET_RECALL, fit_knobs

    def recall_at(value: int, k_factor: int | None) -> float:
        set_knobs(value, k_factor)
        return recall(search_cls(d.mated), d.truth)

    knob, k_factor, got = fit_knobs(recall_at, start, limit, k_factors=k_factors, target=TARGET_RECALL)
    set_knobs(knob, k_factor)
    recall(search_cls(d.mated), d.truth)  # the predictions at the chosen knobs, for the accuracy
    return knob, k_factor, got


def k_factors_from(start: int | None) -> list[int] | None:
    """The re-rank candidates a refined index tries, from its current ``start`` on."""
    from megaclass.gallery.tuning import K_FACTORS

    return [k for k in K_FACTORS if k >= start] if start else None


def speed(search_one, search_batch, queries: np.ndarray, single: int,
          batch: np.ndarray | None = None, between: Callable[[], None] | None = None) -> dict:
    """Single-query p50/p99 (ms) over the first ``single`` queries, then queries per second
    of one batched call over ``batch`` (default: all ``queries``); ``between()`` runs
    between the two (e.g. to give the batch its threads back)."""
    lat = []
    for q in queries[:single]:
        t = time.perf_counter()
        search_one(q[None, :])
        lat.append(time.perf_counter() - t)
    a = np.asarray(lat) * 1000
    if between is not None:
        between()
    batch = queries if batch is None else batch
    t = time.perf_counter()
    search_batch(batch)
    return {"p50_ms": float(np.percentile(a, 50)), "p99_ms": float(np.percentile(a, 99)),
            "batch_qps": len(batch) / (time.perf_counter() - t)}


def timed(fn) -> float:
    """Seconds ``fn()`` takes (how long reopening a saved index takes)."""
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def row(index: str, knob: dict, recall_at_1: float, templates_per_s: float, speeds: dict,
        open_s: float, disk_bytes: int, durable: bool, **extra) -> dict:
    """A system's result, with the keys every system reports."""
    return {"index": index, "knob": knob, **extra, "recall_at_1": recall_at_1,
            "enroll_templates_per_s": templates_per_s, **speeds, "open_s": open_s,
            "disk_mb": disk_bytes / 2**20, "durable": durable}


def dir_bytes(p: Path) -> int:
    return sum(f.stat().st_size for f in p.rglob("*") if f.is_file())


def progress(done: int, total: int, started: float) -> None:
    """A progress line on stderr, in templates: what a timed-out run reports as how far it got."""
    print(json.dumps({"built": done, "of": total, "seconds": time.perf_counter() - started}),
          file=sys.stderr, flush=True)
