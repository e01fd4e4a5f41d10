"""Live recall of a gallery's approximate index, and the probes its re-tuning uses.

:class:`RecallWatch` (one per :class:`~megaclass.gallery.Gallery`, given its
:class:`~megaclass.gallery.state.GalleryState`):

- samples a rate-limited fraction of live searches (``rate`` of the rows, at most
  ``batch`` rows per exact pass and one pass per ``interval`` seconds), re-runs them as
  exact searches over the store in a background thread, and keeps the rolling recall@1
  of the index against them over the last :data:`WINDOW` samples, with its 95 % interval;
- keeps the (best score, best-vs-second gap) pairs of those exact searches (numbers, not
  vectors) so that synthetic probes can be calibrated to them
  (:func:`~megaclass.gallery.probes.calibrated`);
- when the rolling recall is below the target with 95 % confidence (the interval's upper
  end under it, not one miss), re-tunes the index on the best probes available (the
  opt-in query reservoir, else leave-one-out, else calibrated), and logs why;
- an exact index reports recall 1.0 and samples nothing.

The sampled vectors live in memory only until their exact pass; nothing here logs them.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections import deque
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import ConfigError, InvalidInputError
from .probes import Probes, default_probes, exact_topk, min_probes, real, wilson
from .reservoir import FILE_NAME, QueryReservoir
from .tuning import TARGET_RECALL, uniform_sample

if TYPE_CHECKING:  # pragma: no cover
    from .state import GalleryState

log = logging.getLogger("megaclass.gallery")

WINDOW = 2000  # rolling window of sampled searches
PAIRS_MAX = 4096  # (best, gap) pairs kept to calibrate probes
RATE = 0.01  # default share of searched rows re-run exactly
BATCH = 64  # rows per exact pass
INTERVAL = 30.0  # seconds between exact passes at most
RECALIBRATE_PAIRS = 500  # observed searches that replace the prior of calibrated probes
RESERVOIR_MIN = 1000  # kept queries that replace synthetic / leave-one-out probes
CALIBRATION_SAMPLE = 20_000  # templates drawn to place calibrated probes on
MONITOR_SETTING, RATE_SETTING, RESERVOIR_SETTING = "recall_monitor", "recall_sample_rate", "query_reservoir"


class RecallWatch:
    """The recall-keeping part of a gallery (see the module docstring)."""

    def __init__(self, state: GalleryState):
        self._g = state
        self.enabled = True
        self.rate = RATE
        self.batch = BATCH
        self.interval = INTERVAL
        self._pending: list[tuple[np.ndarray, int]] = []
        self._outcomes: deque[bool] = deque(maxlen=WINDOW)
        self._pairs: deque[tuple[float, float]] = deque(maxlen=PAIRS_MAX)
        self._last_pass = 0.0
        self._lock = threading.Lock()
        self._worker: threading.Thread | None = None
        self._rng = random.Random(0)
        self.reservoir: QueryReservoir | None = None

    # ------------------------------------------------------------------ settings
    def configure(self, store) -> None:
        """Read the gallery's settings (monitor on/off, rate, reservoir capacity)."""
        self.enabled = bool(store.get_meta(MONITOR_SETTING, True))
        self.rate = float(store.get_meta(RATE_SETTING, RATE))
        capacity = int(store.get_meta(RESERVOIR_SETTING, 0) or 0)
        with self._lock:
            if capacity and (self.reservoir is None or self.reservoir.capacity != capacity):
                self.reservoir = QueryReservoir(self._g.path, self._g.dim, capacity, cipher=store.cipher,
                                                gallery_uuid=store.uuid,
                                                encrypted=store.get_meta("encryption") is not None)
            elif not capacity:
                self.reservoir = None

    def set_monitor(self, store, enabled: bool, rate: float | None) -> None:
        if rate is not None:
            if not isinstance(rate, int | float) or isinstance(rate, bool) or not 0 < rate <= 1:
                raise ConfigError(f"recall sample rate must be a number in (0, 1], got {rate!r}")
            store.set_meta(RATE_SETTING, float(rate))
        store.set_meta(MONITOR_SETTING, bool(enabled))
        self.configure(store)

    def set_reservoir(self, store, capacity: int | None) -> None:
        """Keep up to ``capacity`` recent queries (None: drop them and stop keeping any)."""
        if capacity is None:
            with self._lock:
                if self.reservoir is not None:
                    self.reservoir.drop()
            (self._g.path / FILE_NAME).unlink(missing_ok=True)
        else:
            QueryReservoir.check_capacity(capacity)
        store.set_meta(RESERVOIR_SETTING, capacity or 0)
        self.configure(store)

    def save(self) -> None:
        with self._lock:
            if self.reservoir is not None:
                self.reservoir.save()

    def stop(self) -> None:
        """Wait for a running exact pass (the gallery is closing); pending samples are dropped."""
        with self._lock:
            self._pending = []
        self.wait()

    def wait(self) -> None:
        """Wait for a running exact pass and the re-tune it may trigger."""
        with self._lock:
            worker = self._worker
        if worker is not None:
            worker.join()

    # ------------------------------------------------------------------ live searches
    def observe(self, queries: np.ndarray, best: list[int]) -> None:
        """Called with each unfiltered search: its query rows and the best class found."""
        if self.reservoir is not None and len(queries):
            with self._lock:
                self.reservoir.add(queries)
        if not self.enabled or self._g.index.exact or not len(queries):
            return
        rows = [i for i in range(len(queries)) if self._rng.random() < self.rate]
        if not rows:
            return
        with self._lock:
            room = 4 * self.batch - len(self._pending)
            self._pending += [(queries[i].copy(), best[i]) for i in rows[:max(room, 0)]]
            due = (len(self._pending) >= self.batch
                   and time.monotonic() - self._last_pass >= self.interval)
            if not due or (self._worker is not None and self._worker.is_alive()):
                return
            if not self._g.background:
                self._worker = None
            else:
                self._worker = threading.Thread(target=self._background_pass, daemon=True,
                                                name=f"megaclass-recall-{self._g.path.name}")
                self._worker.start()
                return
        self.run_pass()

    def _background_pass(self) -> None:
        try:
            self.run_pass()
        except Exception as exc:  # keep serving; say why the pass failed
            log.warning("gallery %s: live recall pass failed: %s: %s", self._g.path.name,
                        type(exc).__name__, exc)

    def run_pass(self) -> dict | None:
        """Re-run the pending sampled searches exactly; re-tune if recall is confidently
        below target. Returns the re-tune's log entry, if there was one."""
        with self._lock:
            batch, self._pending = self._pending, []
            self._last_pass = time.monotonic()
        if not batch:
            return None
        g = self._g
        q = np.stack([b[0] for b in batch])
        found = np.array([b[1] for b in batch])
        try:
            reader = g.store.reader()
        except Exception:  # closing: drop the batch
            return None
        try:
            tids, cids = reader.template_classes()
            ids, scores = exact_topk(q, reader.iter_templates(), 8)
        finally:
            reader.close()
        cls = np.where(ids >= 0, cids[np.searchsorted(tids, np.maximum(ids, tids[0]))], -1)
        rival = np.argmax((cls != cls[:, :1]) & (cls >= 0), axis=1)
        gap = scores[:, 0] - np.where(cls[np.arange(len(q)), rival] != cls[:, 0],
                                      scores[np.arange(len(q)), rival], -1.0)
        with self._lock:
            self._outcomes.extend((found == cls[:, 0]).tolist())
            self._pairs.extend(zip(scores[:, 0].tolist(), np.minimum(gap, 1.0).tolist(), strict=True))
        return self._maybe_retune()

    def live(self) -> dict:
        """``{"live_recall_at_1", "live_recall_ci95", "live_recall_samples"}`` (1.0 when exact)."""
        if self._g.index.exact:
            return {"live_recall_at_1": 1.0, "live_recall_samples": 0, "live_recall_monitor": "exact index"}
        with self._lock:
            n, hits = len(self._outcomes), int(sum(self._outcomes))
        out: dict[str, Any] = {"live_recall_samples": n,
                               "live_recall_monitor": "on" if self.enabled else "off",
                               "live_recall_rate": self.rate}
        if n:
            out["live_recall_at_1"] = round(hits / n, 4)
            out["live_recall_ci95"] = [round(x, 4) for x in wilson(hits, n)]
        if self.reservoir is not None:
            out["query_reservoir"] = {"capacity": self.reservoir.capacity, "kept": len(self.reservoir)}
        return out

    def _maybe_retune(self) -> dict | None:
        with self._lock:
            n, hits = len(self._outcomes), int(sum(self._outcomes))
            pairs = len(self._pairs)
        info = self._g.index.info
        if info.get("calibrated_to") == "prior" and pairs >= RECALIBRATE_PAIRS:
            return self.retune(f"calibrating the tuning probes to {pairs} observed searches "
                               "(the index was tuned on the near-tie prior)")
        if n < min_probes(TARGET_RECALL):
            return None
        low, high = wilson(hits, n)
        if high >= TARGET_RECALL:
            return None
        why = (f"live recall@1 {hits / n:.3f} (95 % interval {low:.3f}-{high:.3f}) over the last {n} "
               f"sampled searches is below the target {TARGET_RECALL}")
        entry = self.retune(why)
        with self._lock:
            self._outcomes.clear()  # new knobs: a fresh window
        return entry

    # ------------------------------------------------------------------ re-tuning
    def observed_pairs(self) -> np.ndarray | None:
        with self._lock:
            enough = len(self._pairs) >= min_probes(TARGET_RECALL)
            return np.array(self._pairs, np.float32) if enough else None

    def probe_maker(self):
        """The probes an index (re)build tunes on: the reservoir's queries when it holds
        enough, else leave-one-out or calibrated (to the observed score pairs)."""
        pairs, kept = self.observed_pairs(), self._reservoir_queries()

        def make(sample_ids, sample, tids, cids, read) -> Probes:
            if kept is not None:
                return real(kept, tids, cids, read, "reservoir")
            return default_probes(sample_ids, sample, tids, cids, read, pairs=pairs)

        return make

    def _reservoir_queries(self) -> np.ndarray | None:
        with self._lock:
            if self.reservoir is None or len(self.reservoir) < RESERVOIR_MIN:
                return None
            return self.reservoir.queries()

    def retune(self, why: str) -> dict:
        """Re-fit the index's knobs now on the best probes available; logs and returns why."""
        g = self._g
        index = g.index
        if index.exact:
            return dict(index.describe(), recall_at_1=1.0, tuned_by="exact")
        reader = g.store.reader()
        try:
            tids, cids = reader.template_classes()
            if not len(tids):
                raise InvalidInputError("tune needs an enrolled gallery: this one is empty")
            sample = uniform_sample(reader.iter_templates(), len(tids), CALIBRATION_SAMPLE,
                                    np.random.default_rng(1), g.dim)
            probes = self.probe_maker()(sample[0], sample[1], tids, cids, reader.iter_templates)
            out = index.tune_on(probes, lock=g.search_lock.write())
        finally:
            reader.close()
        g.snapshot_stale()  # the snapshot carries the knobs
        entry = {"event": "retune", "why": why, **{k: out.get(k) for k in (
            "index", "nprobe", "efSearch", "k_factor", "recall_at_1", "recall_ci95", "recall_queries",
            "tuned_by", "calibrated_to") if k in out}}
        log.warning("gallery %s re-tuned its index: %s; now %s", g.path.name, why,
                    {k: v for k, v in entry.items() if k not in ("event", "why")})
        g.maintenance_log.append(entry)
        return entry


