"""Background upkeep of a gallery's index: upgrade, re-fit and tombstone rebuilds.

The index is derived from the store, so it can be rebuilt at any time without stopping
service: :class:`IndexUpkeep` (given a gallery's
:class:`~megaclass.gallery.state.GalleryState` and its probe maker) builds a new index
from a second, read-only SQLite connection in a daemon thread while searches and writes
go on against the current one, then swaps it in under the write lock, replaying the
templates written meanwhile. A due rebuild first waits for a pause in writes (a bulk
enroll runs at full speed and is not outgrown by the rebuild).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from ..errors import MegaclassError
from .faiss_api import remove_ids
from .index import ClassIndex
from .probes import ProbeMaker
from .state import GalleryState
from .store import Store

PROGRESS_MIN = 200_000  # show a progress bar when rebuilding an index of this many templates
REPLAY_MAX = 0.25  # a background rebuild is redone if the gallery grew by more than this meanwhile
QUIET_SECONDS = 1.0  # a due rebuild waits for this long without writes (a bulk enroll finishes first)
MAX_DEFER_SECONDS = 300.0  # ... but not longer than this under a steady stream of writes


class _Cancelled(Exception):
    """A background index rebuild was stopped (the gallery is closing)."""


class IndexUpkeep:
    """Builds a gallery's index from its store and rebuilds it in the background when
    :meth:`ClassIndex.needs_rebuild` says so. ``probes()`` gives the probe maker a build
    tunes on (the recall monitor's, see :mod:`megaclass.gallery.recall`)."""

    def __init__(self, state: GalleryState, probes: Callable[[], ProbeMaker]):
        self._state = state
        self._probes = probes
        self._worker: threading.Thread | None = None
        self._cancel = threading.Event()
        #: show a progress bar on stderr when a large index is rebuilt
        self.show_progress = True

    @property
    def running(self) -> bool:
        """Whether a background index rebuild is running."""
        return self._worker is not None and self._worker.is_alive()

    def build(self, store: Store, requested: str, n: int, cancel: threading.Event | None = None
              ) -> ClassIndex:
        """Build the index from the store, with a progress bar for large galleries
        (none in the background: ``cancel`` given, checked between chunks)."""

        def read():
            for chunk in store.iter_templates():
                if cancel is not None and cancel.is_set():
                    raise _Cancelled
                yield chunk

        st = self._state
        tuning: dict[str, Any] = {"owners": store.template_classes, "probes": self._probes()}
        if n < PROGRESS_MIN or not self.show_progress or cancel is not None:
            return ClassIndex.build(st.dim, read, n, spec=requested, **tuning)
        from rich.progress import Progress

        with Progress(transient=True) as bar:
            task = bar.add_task(f"building index of {st.path.name}", total=n)
            return ClassIndex.build(st.dim, read, n, spec=requested, **tuning,
                                    progress=lambda done, total: bar.update(task, completed=done))

    def schedule(self) -> None:
        """Start a rebuild if the index calls for one and none is running (caller holds
        the writer lock). Searches and writes go on against the current index meanwhile;
        with ``state.background`` off, the rebuild runs now, in the calling thread."""
        st = self._state
        if st.closed or not st.index.needs_rebuild() or self.running:
            return
        if not st.background:
            self._maintain(threading.Event())
            return
        self._cancel = threading.Event()
        self._worker = threading.Thread(target=self._maintain, args=(self._cancel,),
                                        name=f"megaclass-index-{st.path.name}", daemon=True)
        self._worker.start()

    def _maintain(self, cancel: threading.Event) -> dict | None:
        """Rebuild the index from a read-only connection, then swap it in, replaying the
        templates added or removed since the build read the store. In the background it
        first waits for :data:`QUIET_SECONDS` without writes (at most
        :data:`MAX_DEFER_SECONDS`), so that a bulk enroll runs at full speed.

        If the gallery grew by more than :data:`REPLAY_MAX` of the built index meanwhile
        (a bulk enroll), the build is redone from the larger store instead of replaying
        (at most 3 times). Replayed vectors go into the new index while searches still use
        the old one; only the final pointer swap excludes searches. Returns the entry it
        added to the state's ``maintenance_log`` (None if cancelled or the gallery closed).
        """
        st = self._state
        due = time.monotonic()
        try:
            self._wait_for_quiet(cancel)
            started = time.monotonic()
            for attempt in range(4):
                reader = st.store.reader()
                try:
                    with reader.reading():
                        new = self.build(reader, st.index.requested, reader.template_count(), cancel)
                finally:
                    reader.close()
                with st.writer_lock:  # no writes meanwhile; searches go on
                    if st.closed or cancel.is_set():
                        return None
                    live = st.index.live_template_ids()
                    built = new.template_ids()
                    added = np.setdiff1d(live, built)
                    if len(added) > max(REPLAY_MAX * len(built), 10_000) and attempt < 3:
                        continue
                    gone = np.setdiff1d(built, live)
                    if len(added):
                        new.add_hidden(added, st.store.templates_by_ids(added))
                    if len(gone) and new.exact:
                        remove_ids(new.index, gone)
                    st.swap_index(new, live)
                    entry = dict(new.describe(), templates=new.ntotal, rebuilds=attempt + 1,
                                 waited_s=round(started - due, 2),
                                 build_s=round(time.monotonic() - started, 2))
                    break
        except _Cancelled:
            return None
        except Exception as exc:  # keep serving from the current index; say why
            entry = {"error": f"{type(exc).__name__}: {exc}"}
        st.maintenance_log.append(entry)
        return entry

    def _wait_for_quiet(self, cancel: threading.Event) -> None:
        """In the background, let a burst of writes (a bulk enroll) end before rebuilding:
        the rebuild would compete with it for the CPU and be outgrown by it anyway."""
        if not self._state.background or threading.current_thread() is not self._worker:
            return
        due = time.monotonic()
        while not cancel.is_set():
            idle = self._state.idle_seconds()
            if idle >= QUIET_SECONDS or time.monotonic() - due >= MAX_DEFER_SECONDS:
                return
            cancel.wait(min(QUIET_SECONDS - idle, 0.25))
        raise _Cancelled

    def rebuild_now(self) -> None:
        """Rebuild the index from the store now (waits for a background rebuild first)."""
        self.wait()
        with self._state.writer_lock:
            entry = self._maintain(threading.Event())
        if entry is not None and "error" in entry:
            raise MegaclassError(f"index rebuild failed: {entry['error']}")

    def wait(self, timeout: float | None = None) -> bool:
        """Block until a background rebuild has finished; False on timeout."""
        worker = self._worker
        if worker is not None:
            worker.join(timeout)
            return not worker.is_alive()
        return True

    def stop(self) -> None:
        """Cancel an unfinished background rebuild (redone on next open) and wait for it."""
        self._cancel.set()
        self.wait()
