"""FAISS index derived from the store, plus the template -> class map for class-collapse.

The index is chosen by a FAISS factory string or ``"auto"`` (see
:mod:`megaclass.gallery.index_spec`: exact search up to 50k templates, then 4-bit
fast-scan IVF-PQ re-ranked exactly), trained on the store's templates, with ``nprobe`` /
``efSearch`` tuned until recall@1 against exact search reaches
:data:`~megaclass.gallery.tuning.TUNE_TARGET` on probes, and what it chose recorded. Every
index is wrapped in ``IndexIDMap2`` keyed by template id.

Erasure: ``Flat`` removes vectors from FAISS at once. Other index types keep a
*tombstone* (the template id maps to no class, so search skips it; HNSW cannot remove
vectors at all) and the index is rebuilt from the store when tombstones exceed
:data:`TOMBSTONE_REBUILD` of its vectors, or on :meth:`Gallery.compact`.

The index is never the source of truth: ``index.faiss`` + ``index.json`` are a snapshot
stamped with the gallery uuid, the op seq it covers, its spec and SHA-256. On open a
matching snapshot is loaded and brought up to date by replaying the difference with the
store (templates added since are read and inserted; removed ones dropped), otherwise the
index is rebuilt. Only FAISS's binary format and JSON are written: nothing is pickled.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable
from pathlib import Path

import faiss
import numpy as np

from ..errors import ConfigError, MegaclassError
from .class_map import TemplateClassMap
from .class_search import rerank_factor, search_classes
from .concurrency import threads_for
from .faiss_api import hnsw_params, ivf_params, refine_params, remove_ids
from .index_spec import min_train, resolve_spec
from .probes import ProbeMaker, Probes, default_probes, wilson
from .purge import can_remove_in_place, remove_positions, scrub_positions
from .snapshot import read_snapshot, write_snapshot
from .tuning import K_FACTORS, TUNE_TARGET, fit_knobs, uniform_sample

INDEX_TYPE = "Flat"  # the default spec
TOMBSTONE_REBUILD = 0.10
REFINE_K_FACTOR = K_FACTORS[0]  # "...,RFlat": candidates re-ranked exactly per class wanted
TRAIN_SAMPLE = 200_000  # templates drawn to train IVF / PQ (and to make tuning queries)


def _new_faiss(dim: int, spec: str) -> faiss.IndexIDMap2:
    inner = faiss.IndexFlatIP(dim) if spec == "Flat" else faiss.index_factory(
        dim, spec, faiss.METRIC_INNER_PRODUCT)
    return faiss.IndexIDMap2(inner)


class ClassIndex:
    """Template vectors in FAISS + a dense ``template id -> class id`` array.

    ``class id`` is the store's ``classes.id``; ``-1`` marks template ids that are absent
    (never enrolled, removed, or tombstoned inside a non-Flat FAISS index).

    Attributes
    ----------
    spec : the concrete factory string in use; requested : what was asked ("auto", ...).
    info : how it was chosen and tuned (``nprobe`` / ``efSearch``, measured recall@1).
    tombstones : erased templates still inside the FAISS index (skipped by search).
    refine : the exact re-rank stage (``...,RFlat``) inside the id map, or None.
    knob_index : the index whose ``nprobe`` / ``efSearch`` a search sets (below ``refine``).
    search_params : unfiltered searches' FAISS parameters by ``(wanted, fetched)``, built
        once per knob setting (building them costs ~15 us a search); cleared by
        :meth:`apply_knobs`.
    """

    def __init__(self, dim: int, index: faiss.IndexIDMap2 | None = None, *, spec: str = "Flat",
                 requested: str | None = None, info: dict | None = None):
        self.dim = dim
        self.spec = spec
        self.requested = requested or spec
        self.info = dict(info or {})
        self.index = index if index is not None else _new_faiss(dim, spec)
        inner = faiss.downcast_index(self.index.index)  # kept: downcasting costs ~4 us a search
        self.refine: faiss.IndexRefine | None = inner if isinstance(inner, faiss.IndexRefine) else None
        self.knob_index = inner if self.refine is None else faiss.downcast_index(self.refine.base_index)
        self.tombstones = 0
        self.class_map = TemplateClassMap()
        self.search_params: dict[tuple[int, int], faiss.SearchParameters | None] = {}
        self.apply_knobs()

    @property
    def ntotal(self) -> int:
        """Live templates (FAISS vectors minus tombstones)."""
        return int(self.index.ntotal) - self.tombstones

    @property
    def exact(self) -> bool:
        return self.spec == "Flat"

    # ------------------------------------------------------------------ map upkeep
    def set_map(self, tids: np.ndarray, cids: np.ndarray) -> None:
        """Reset the template -> class map (from the store, on open)."""
        self.class_map.reset(tids, cids)
        self.tombstones = int(self.index.ntotal) - len(tids)

    def max_per_class(self) -> int:
        """Most live templates of any class."""
        return self.class_map.max_per_class()

    def add(self, tids: np.ndarray, cids: np.ndarray, vecs: np.ndarray) -> None:
        """Add templates (ids from the store, their class ids, unit float32 rows)."""
        self.add_hidden(tids, vecs)
        self.publish(tids, cids)

    def add_hidden(self, tids: np.ndarray, vecs: np.ndarray) -> None:
        """Put templates into FAISS but not yet into the map: search skips them (they map
        to no class) until :meth:`publish`, or :meth:`discard` if their enroll fails."""
        if not len(tids):
            return
        self.class_map.reserve(int(tids.max()))
        with threads_for(len(tids)):
            self.index.add_with_ids(np.ascontiguousarray(vecs, dtype=np.float32), tids)

    def discard(self, tids: np.ndarray) -> bool:
        """Undo the last :meth:`add_hidden`; False if this index type cannot remove vectors
        (HNSW): the caller must then reload the index, because a failed transaction's
        template ids are handed out again by the next one (tombstones would come back)."""
        if not len(tids):
            return True
        total = int(self.index.ntotal)
        return remove_positions(self.index, np.arange(total - len(tids), total, dtype=np.int64))

    def publish(self, tids: np.ndarray, cids: np.ndarray) -> None:
        """Make templates added by :meth:`add_hidden` searchable as members of ``cids``."""
        if not len(tids):
            return
        self.class_map.assign(tids, cids)

    def remove(self, tids: np.ndarray) -> None:
        """Remove templates by id (Flat: from FAISS; others: tombstones, purged once they
        pass :data:`TOMBSTONE_REBUILD` of the index, or on :meth:`Gallery.compact`)."""
        if not len(tids):
            return
        tids = np.ascontiguousarray(tids, dtype=np.int64)
        cids = self.class_map.unassign(tids)
        if self.exact:
            remove_ids(self.index, tids)
        else:
            self.tombstones += int(np.sum(cids >= 0))
        if (self.tombstones > TOMBSTONE_REBUILD * max(int(self.index.ntotal), 1)
                and can_remove_in_place(self.index)):
            self.purge()  # else needs_rebuild() asks for a background rebuild

    def _tombstoned(self) -> np.ndarray:
        return np.flatnonzero(self.class_map.lookup(self.template_ids()) < 0)

    def purge(self, *, cheap_only: bool = False) -> bool:
        """Drop tombstoned templates from FAISS for real, without re-training (see
        :mod:`megaclass.gallery.purge`). ``cheap_only``: only where that is one pass over
        the ids; otherwise overwrite their exact vectors with zeros (:func:`scrub_positions`).
        False if the tombstones are still there (HNSW, or 4-bit codes without exact ones)."""
        if not self.tombstones:
            return True
        if cheap_only and not can_remove_in_place(self.index):
            scrub_positions(self.index, self._tombstoned())
            return False
        if not remove_positions(self.index, self._tombstoned()):
            return False
        self.tombstones = 0
        return True

    def needs_rebuild(self) -> bool:
        """Whether the index should be rebuilt from the store (in the background):

        - erased templates left as tombstones exceed :data:`TOMBSTONE_REBUILD`;
        - an exact index that should now be the requested one ("auto" outgrew exact
          search, or a trainable spec now has enough templates to train);
        - an approximate index that has doubled since it was trained and tuned (its
          partitions and search knob are re-fitted; "auto" also widens ``nlist``).
        """
        total = int(self.index.ntotal)
        if self.tombstones and self.tombstones > TOMBSTONE_REBUILD * max(total, 1):
            return True
        if self.exact:
            concrete = resolve_spec(self.requested, self.ntotal, self.dim)
            return concrete != "Flat" and self.ntotal >= min_train(concrete)
        return self.ntotal > 0 and self.ntotal >= 2 * int(self.info.get("tuned_at", 0))

    # ------------------------------------------------------------------ search
    def search(self, queries: np.ndarray, k: int,
               allowed: np.ndarray | None = None) -> list[tuple[list[int], list[float]]]:
        """Best ``k`` distinct classes per query row (see :func:`search_classes`)."""
        return search_classes(self, queries, k, allowed)

    def template_ids(self) -> np.ndarray:
        """Ids of the templates the FAISS index holds, tombstones included (int64)."""
        return faiss.vector_to_array(self.index.id_map).astype(np.int64)

    def live_template_ids(self) -> np.ndarray:
        """Ids of the templates search can return (tombstones excluded)."""
        return self.class_map.mapped(self.template_ids())

    # ------------------------------------------------------------------ build / tune
    @classmethod
    def build(cls, dim: int, read: Callable[[], Iterable[tuple[np.ndarray, np.ndarray]]], n: int, *,
              spec: str = "Flat", progress=None,
              owners: Callable[[], tuple[np.ndarray, np.ndarray]] | None = None,
              probes: ProbeMaker | None = None) -> ClassIndex:
        """Build from the store: ``read()`` yields ``(template ids, vectors)`` chunks of all
        ``n`` templates (called once per pass; every pass must see the same templates).

        Memory stays at the index plus one chunk plus a training sample: ``Flat`` is
        filled in one pass; a trainable spec takes one pass to draw a uniform sample of
        :data:`TRAIN_SAMPLE` templates, one to add, and a few to make tuning probes and
        their exact answers (see :meth:`tune_on`). With too few templates to train, exact
        ``Flat`` is used and ``info["fallback"]`` says why. ``progress(done, total)``
        follows the add pass. ``owners()`` gives ``(template ids, class ids)`` (the map
        is set from it; without it each template is its own class); ``probes`` makes the
        tuning probes (default :func:`~megaclass.gallery.probes.default_probes`).
        """
        concrete = resolve_spec(spec, n, dim)
        info: dict = {}
        if n < min_train(concrete):
            info["fallback"] = (f"{concrete} needs >= {min_train(concrete)} templates to train, "
                                f"the gallery has {n}: using exact Flat")
            concrete = "Flat"
        self = cls(dim, spec=concrete, requested=spec, info=info)
        sample = None
        if not self.index.is_trained or not self.exact:
            sample = uniform_sample(read(), n, TRAIN_SAMPLE, np.random.default_rng(0), dim)
            if not self.index.is_trained:
                self.index.train(sample[1])
        done = 0
        for tids, vecs in read():
            self.index.add_with_ids(np.ascontiguousarray(vecs, dtype=np.float32), tids)
            done += len(tids)
            if progress is not None:
                progress(done, n)
        if int(self.index.ntotal) != n:
            raise MegaclassError(f"the store changed while the index was built ({done} of {n} templates)")
        if sample is not None and n:
            tids, cids = owners() if owners is not None else (self.template_ids(), self.template_ids())
            order = np.argsort(tids)
            tids, cids = tids[order], cids[order]
            self.set_map(tids, cids)
            self.tune_on((probes or default_probes)(sample[0], sample[1], tids, cids, read))
        return self

    def tune_on(self, probes: Probes, lock=None) -> dict:
        """Smallest nprobe / efSearch (raising the re-ranked candidates of ``...,RFlat``
        when the codes are too coarse) at which the best class of ``probes`` agrees with
        their exact answer on :data:`TUNE_TARGET` of them. Trials pass their knobs as
        search parameters (live searches keep the current ones); the choice is applied
        under ``lock`` (a context manager) at the end. Records the knobs, the recall
        reached (below target only if even the largest knob misses), which probes
        (``tuned_by``), how many (``recall_queries``) and the 95 % interval
        (``recall_ci95``) in :attr:`info`; returns :meth:`describe`."""
        knob, limit, refine = self.search_knob()
        def recall_at(value: int, k_factor: int | None) -> float:
            right = self.probe_answers(probes, knob, value, k_factor) == probes.truth
            return float(np.mean(right))

        value, k_factor, recall = fit_knobs(recall_at, 8 if knob == "nprobe" else 32, limit,
                                            k_factors=K_FACTORS if refine else None, target=TUNE_TARGET)
        hits = round(recall * len(probes))
        with lock if lock is not None else contextlib.nullcontext():
            self.info[knob] = value
            if k_factor is not None:
                self.info["k_factor"] = k_factor
            self.apply_knobs()
            self.info.pop("calibrated_to", None)
            if probes.calibrated_to:
                self.info["calibrated_to"] = probes.calibrated_to
            self.info.update(recall_at_1=round(recall, 4),
                             recall_ci95=[round(x, 4) for x in wilson(hits, len(probes))],
                             recall_queries=len(probes), tuned_by=probes.kind,
                             tuned_at=int(self.index.ntotal))
        return self.describe()

    def _params(self, knob: str, value: int, k_factor: int | None, fetched: int) -> faiss.SearchParameters:
        """Search parameters that set ``knob`` (and the re-ranked candidates, per class
        answer: :func:`~megaclass.gallery.class_search.rerank_factor`) for one call that
        fetches ``fetched`` neighbours to answer one class."""
        base = ivf_params(value) if knob == "nprobe" else hnsw_params(value)
        if k_factor is None:
            return base
        return refine_params(rerank_factor(k_factor, 1, fetched), base, keep=base)

    def probe_answers(self, probes: Probes, knob: str, value: int, k_factor: int | None) -> np.ndarray:
        """Best class of each probe by this index (-1 if none) with ``knob`` at ``value``
        and ``k_factor`` re-ranked candidates, skipping ``probes.exclude``. The re-rank
        depth is that of a real search for one class: the left-out template and the
        tombstones fetched beside the answer add one candidate each."""
        extra = 1 if probes.exclude is not None else 0
        kk = min(int(self.index.ntotal), 1 + extra + (4 if self.tombstones else 0))
        params = self._params(knob, value, k_factor, kk)
        _, ids = self.index.search(probes.queries, kk, params=params)
        cids = self.class_map.classes_of(ids)
        skip = cids < 0  # FAISS's padding, tombstones and hidden templates
        if probes.exclude is not None:
            skip |= ids == probes.exclude[:, None]
        first = np.argmax(~skip, axis=1)
        found = cids[np.arange(len(ids)), first]
        return np.where(skip.all(axis=1), -1, found)

    def search_knob(self) -> tuple[str, int, bool]:
        """``(name, upper limit, re-ranked)`` of the knob that trades recall for time:
        ``nprobe`` up to ``nlist`` for IVF, else ``efSearch`` up to 4096; ``re-ranked``:
        ``...,RFlat`` (its ``k_factor`` is a second knob)."""
        ivf = faiss.try_extract_index_ivf(self.index.index)
        refine = isinstance(faiss.downcast_index(self.index.index), faiss.IndexRefine)
        return ("nprobe", int(ivf.nlist), refine) if ivf is not None else ("efSearch", 4096, refine)

    def set_knobs(self, **knobs: int) -> None:
        """Set search knobs by name (``nprobe``, ``efSearch``, ``k_factor``) and apply them:
        how a benchmark or an operator holds the index at chosen knobs."""
        unknown = set(knobs) - {"nprobe", "efSearch", "k_factor"}
        if unknown:
            raise ConfigError(f"unknown search knobs {sorted(unknown)}: nprobe, efSearch, k_factor")
        self.info.update(knobs)
        self.apply_knobs()

    def apply_knobs(self) -> None:
        """Apply the knobs recorded in :attr:`info` to the FAISS index."""
        self.search_params = {}  # built for the old knobs
        inner = faiss.downcast_index(self.index.index)
        if isinstance(inner, faiss.IndexRefine):
            self.info.setdefault("k_factor", REFINE_K_FACTOR)
            inner.k_factor = float(self.info["k_factor"])
        ivf = faiss.try_extract_index_ivf(inner)
        if "nprobe" in self.info and ivf is not None:
            ivf.nprobe = int(self.info["nprobe"])
        if "efSearch" in self.info and hasattr(inner, "hnsw"):
            inner.hnsw.efSearch = int(self.info["efSearch"])

    def memory_bytes(self) -> int:
        """Approximate RAM of the index: vector codes, ids, graph links, the id->class map."""
        inner = faiss.downcast_index(self.index.index)
        n = int(self.index.ntotal)
        per = getattr(inner, "code_size", None) or 4 * self.dim
        if hasattr(inner, "hnsw"):  # level-0 links dominate: 2*M neighbours of 4 bytes
            per = 4 * self.dim + 8 * int(inner.hnsw.nb_neighbors(0) // 2)
        if isinstance(inner, faiss.IndexRefine):  # exact vectors + the base index's codes
            base = faiss.downcast_index(inner.base_index)
            per = 4 * self.dim + (getattr(base, "code_size", 0) or 0)
        if faiss.try_extract_index_ivf(inner) is not None:
            per += 8  # ids stored in the inverted lists
        return n * (per + 16) + self.class_map.nbytes  # + IDMap2's id array and reverse map

    def describe(self) -> dict:
        return {"index": self.spec, "index_requested": self.requested,
                "tombstones": self.tombstones, **self.info}

    def save(self, directory: Path, *, gallery_uuid: str, seq: int, cipher=None) -> None:
        """Write the snapshot ``index.faiss`` + ``index.json`` atomically (sealed with
        AES-256-GCM, bound to the gallery uuid and op seq, when a ``cipher`` is given)."""
        write_snapshot(self.index, directory, {"dim": self.dim, "spec": self.spec,
                                               "requested": self.requested, "info": self.info},
                       gallery_uuid=gallery_uuid, seq=seq, cipher=cipher)

    @classmethod
    def load(cls, directory: Path, *, gallery_uuid: str, dim: int, requested: str,
             cipher=None) -> ClassIndex | None:
        """The snapshot if it is this gallery's and intact, else ``None`` (caller rebuilds).

        It may be older than the store: the caller replays the difference
        (:meth:`Gallery._load_state`). ``index.json``'s ``seq`` says which op it covers.
        """
        found = read_snapshot(directory, gallery_uuid=gallery_uuid, dim=dim, requested=requested,
                              cipher=cipher)
        if found is None:
            return None
        index, meta = found
        return cls(dim, index, spec=str(meta["spec"]), requested=requested,
                   info=meta.get("info") or {})
