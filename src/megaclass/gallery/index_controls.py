"""The index-maintenance half of the :class:`~megaclass.gallery.Gallery` API.

Background rebuilds and compaction, the integrity check, tuning and the search knobs,
the live recall monitor and the kept queries, export and import: what an operator or a
benchmark does to a gallery, as opposed to enrolling and searching
(:mod:`megaclass.gallery.gallery`). :class:`Gallery` inherits :class:`IndexControls`,
which works only on the parts it declares below (built by ``Gallery.__init__``) through
their public methods; the heavier procedures are in :mod:`megaclass.gallery.maintenance`.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, cast

from .recall import RecallWatch
from .state import GalleryState
from .upkeep import IndexUpkeep

if TYPE_CHECKING:
    from .gallery import Gallery


class IndexControls:
    """Index maintenance, tuning and recall monitoring of a gallery (see the module)."""

    _state: GalleryState
    _recall: RecallWatch  # live recall monitor, query reservoir, tuning probes
    _upkeep: IndexUpkeep  # background rebuilds
    _erasures: int  # erasures by this handle since the last compaction

    def _check_writable(self) -> None:
        self._state.check_writable()

    def _gallery(self) -> Gallery:
        """This object as the :class:`Gallery` it is (only Gallery inherits IndexControls),
        for the procedures of :mod:`.maintenance`, which take a gallery."""
        return cast("Gallery", self)

    #: run :meth:`compact` (its light form) after this many erasures by one handle (0: never)
    auto_compact_after = 64

    @property
    def background_maintenance(self) -> bool:
        """Rebuild the index (auto upgrade, growth, tombstones) and run recall passes in
        background threads (default); False: the write that calls for one waits for it."""
        return self._state.background

    @background_maintenance.setter
    def background_maintenance(self, value: bool) -> None:
        self._state.background = bool(value)

    @property
    def show_progress(self) -> bool:
        """Show a progress bar on stderr when a large index is rebuilt in the foreground."""
        return self._upkeep.show_progress

    @show_progress.setter
    def show_progress(self, value: bool) -> None:
        self._upkeep.show_progress = bool(value)

    @property
    def maintenance_log(self) -> list[dict]:
        """What index rebuilds and re-tunes did (or why they failed), oldest first."""
        return self._state.maintenance_log

    @property
    def rebuilding(self) -> bool:
        """Whether a background index rebuild is running."""
        return self._upkeep.running

    def rebuild_index(self) -> None:
        """Rebuild the index from the store now (waits for a background rebuild first);
        drops tombstones, re-trains and re-tunes an approximate index."""
        self._upkeep.rebuild_now()

    def wait_for_index(self, timeout: float | None = None) -> bool:
        """Block until background index maintenance has finished; False on timeout.

        Examples
        --------
        >>> g.enroll_many(many_items); g.wait_for_index(); g.stats()["index"]  # doctest: +SKIP
        'IVF2048,Flat'
        """
        return self._upkeep.wait(timeout)

    def compact(self, *, full: bool = True) -> None:
        """Make erasures final on disk: erased templates are purged from the index, the WAL
        is truncated and the snapshot rewritten (``full``, with ``VACUUM``: the file shrinks)
        or deleted (``full=False``, what automatic compaction does: cheap at any size)."""
        self._check_writable()
        self._upkeep.stop()  # a background rebuild would wait for the lock this holds: stop it first
        with self._state.writer_lock:
            self._compact_locked(full)

    def _compact_locked(self, full: bool) -> None:
        from .maintenance import compact

        compact(self._gallery(), full=full)
        self._erasures = 0

    def check(self) -> dict:
        """Integrity report ``{"ok", "problems", "classes", "templates", ...}``."""
        from .maintenance import check

        return check(self._gallery())

    def tune(self, queries=None) -> dict:
        """Re-fit nprobe / efSearch (and re-ranked candidates) so that the best class of
        probes matches exact search on >= 99 % of them; returns the knobs, the recall, which
        probes (``tuned_by``), how many and its 95 % interval. ``queries``: 100 to 100k real
        probe vectors (not stored); None: the kept queries (:meth:`keep_queries`), else
        leave-one-out or calibrated probes. See :func:`~megaclass.gallery.maintenance.tune`."""
        from .maintenance import tune

        self._check_writable()
        return tune(self._gallery(), queries, self._recall.retune)

    def search_knobs(self) -> dict:
        """The approximate index's search knobs: ``{"knob", "value", "limit"}`` plus
        ``k_factor`` when it re-ranks (``{}`` for exact search)."""
        with self._state.session():
            index = self._state.index
            if index.exact:
                return {}
            name, limit, refine = index.search_knob()
            out = {"knob": name, "value": int(index.info.get(name, 0)), "limit": limit}
            if refine:
                out["k_factor"] = int(index.info.get("k_factor", 0))
            return out

    def set_search_knobs(self, **knobs: int) -> None:
        """Hold the approximate index at these knobs (``nprobe`` / ``efSearch``,
        ``k_factor``) until it is next re-fitted: for measuring at equal recall (``megaclass
        bench gallery``); :meth:`tune` is what fits them."""
        self._check_writable()
        st = self._state
        with st.session(), st.search_lock.write():
            st.index.set_knobs(**knobs)
            st.snapshot_stale()

    def monitor_recall(self, enabled: bool = True, *, rate: float | None = None) -> None:
        """Turn the live recall monitor on or off (on by default) and set the share of
        searched rows it re-runs exactly (default 0.01); kept as gallery settings. See
        :mod:`megaclass.gallery.recall`."""
        self._check_writable()
        with self._state.session() as store:
            self._recall.set_monitor(store, enabled, rate)

    def keep_queries(self, capacity: int) -> None:
        """Opt in to keeping the last ``capacity`` searched query vectors (encrypted with
        the gallery key when there is one; never returned by any API) for re-tuning; see
        :mod:`megaclass.gallery.reservoir`. :meth:`drop_queries` forgets them."""
        self._check_writable()
        with self._state.session() as store:
            self._recall.set_reservoir(store, capacity)

    def drop_queries(self) -> None:
        """Forget the kept queries (memory zeroed, file deleted) and stop keeping them."""
        self._check_writable()
        with self._state.session() as store:
            self._recall.set_reservoir(store, None)

    def export(self, out) -> Path:
        """Export to a folder (manifest.json + .npy files, templates in clear; no pickle)."""
        from .maintenance import export_gallery

        return export_gallery(self._gallery(), out)

    @classmethod
    def import_from(cls, export_dir, path, *, key=None) -> Gallery:
        """Create a new gallery at ``path`` from :meth:`export` output."""
        from .maintenance import import_gallery

        return import_gallery(export_dir, path, key=key)
