"""FAISS index derived from the store, plus the template -> class map for class-collapse.

The index is chosen by a FAISS factory string (one documented grammar, see
:func:`resolve_spec`): ``"Flat"`` (exact), ``"IVF<n>,Flat"``, ``"IVF<n>,SQ8"``,
``"HNSW<M>"``, ... or ``"auto"``, which picks exact search below
:data:`AUTO_EXACT_MAX` templates and ``IVF<n>,Flat`` above, trains it on the store's
templates, tunes ``nprobe`` until recall@1 against exact search reaches
:data:`TARGET_RECALL` on a sample, and records what it chose. Every index is wrapped
in ``IndexIDMap2`` keyed by template id.

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
import math
import re
from collections.abc import Callable, Iterable
from pathlib import Path

import faiss
import numpy as np

from ..errors import ConfigError, MegaclassError
from .class_search import _threads_for, search_classes
from .probes import ProbeMaker, Probes, default_probes, wilson
from .purge import can_remove_in_place, remove_positions, scrub_positions
from .snapshot import read_snapshot, write_snapshot
from .tuning import TUNE_TARGET, smallest_knob, uniform_sample

INDEX_TYPE = "Flat"  # the default spec
AUTO_EXACT_MAX = 200_000  # "auto" uses exact search up to this many templates
TOMBSTONE_REBUILD = 0.10
REFINE_K_FACTOR = 8  # "...,RFlat": candidates re-ranked exactly per result wanted
TRAIN_SAMPLE = 200_000  # templates drawn to train IVF / PQ (and to make tuning queries)
AUTO_NLIST_MIN = 256
AUTO_COARSE_CODES_MAX = 2_000_000  # "auto": PQ<dim/8> codes up to this many templates, PQ<dim/4> beyond
AUTO_MIN_SUBQUANTIZERS = 32  # "auto": 4-bit codes of at least 128 bits
_SPEC = re.compile(r"^(Flat|auto|HNSW\d+(,Flat)?|IVF\d+,(Flat|SQ8|SQ4|SQfp16|PQ\d+(x\d+)?)"
                   r"|IVF\d+,PQ\d+(x4fs|x\d+)?,RFlat"
                   r"|(OPQ\d+(_\d+)?,)?IVF\d+,PQ\d+(x\d+)?|HNSW\d+,(SQ8|SQfp16))$")


def resolve_spec(spec: str, n: int, dim: int | None = None) -> str:
    """The concrete factory string for ``spec`` at ``n`` templates of ``dim`` (``auto`` decides).

    ``auto``: ``Flat`` up to :data:`AUTO_EXACT_MAX` templates; above, an IVF index with
    ``nlist`` the power of two nearest ``sqrt(n)``, at most ``n / 39`` so that k-means has
    enough points per centroid. FAISS's guidance is 4 to 16 ``sqrt(n)``, but side by side
    at 1M classes x 2 templates x 256 (raw FAISS, equal recall@1 0.99, one query thread)
    1024, 2048 and 4096 lists answered in the same time (p50 1.69 / 1.81 / 1.71 ms, noisy
    queries need 10-20 % of the vectors scanned either way) while 1024 lists trained 4x
    and added 3x faster (86k vs 29k templates/s): fewer lists, cheaper enrolls and
    rebuilds. Its lists hold 4-bit fast-scan PQ codes re-ranked with the exact vectors
    (``RFlat``): scanning a list costs a fraction of scanning float vectors, so the same
    recall takes ~10x less time than ``IVF,Flat`` (measured at 1M x 256, see README), for
    ~3 % more memory. Code size (see :func:`_auto_subquantizers`), measured side by side
    with raw FAISS at 1M classes x 2 templates, 1,024 lists, equal recall@1 0.99, one
    thread: at D=256 ``PQ32x4fs`` answered in 0.49 ms where ``PQ64x4fs`` took 1.07 ms, at
    the same ``nprobe`` (the partitions, not the codes, limit recall there) and 8 re-ranked
    candidates per result; ``PQ16x4fs`` (64-bit codes) never reached 0.99, at D=256 (0.98
    with 128 candidates) nor at D=128 (0.975), where ``PQ32x4fs`` took 0.49 ms too. At 10M
    x 128, ``PQ16x4fs`` reached only 0.86 with every list scanned and 512 candidates, where
    ``PQ32x4fs`` reached 0.99 with 128: more templates, more near rivals that a coarse code
    confuses. Dimensions not divisible by 8 get ``IVF<nlist>,Flat``.
    """
    if not isinstance(spec, str) or not _SPEC.match(spec):
        raise ConfigError(f"unsupported index spec {spec!r}: use 'auto', 'Flat', 'IVF4096,Flat', "
                          "'IVF4096,SQ8', 'IVF4096,PQ32', 'IVF4096,PQ64x4fs,RFlat', 'HNSW32', ...")
    if spec != "auto":
        return spec
    if n <= AUTO_EXACT_MAX:
        return "Flat"
    nlist = min(2 ** round(math.log2(math.sqrt(n))), 2 ** math.floor(math.log2(max(n / 39, 1))))
    nlist = min(max(nlist, AUTO_NLIST_MIN), 65536)
    if dim and dim % 8 == 0:
        return f"IVF{nlist},PQ{_auto_subquantizers(dim, n)}x4fs,RFlat"
    return f"IVF{nlist},Flat"


def _auto_subquantizers(dim: int, n: int) -> int:
    """4-bit sub-quantizers of ``auto``'s codes: one per 8 dimensions up to
    :data:`AUTO_COARSE_CODES_MAX` templates, one per 4 beyond, at least
    :data:`AUTO_MIN_SUBQUANTIZERS`; the nearest count that divides ``dim``."""
    want = max(dim // (8 if n <= AUTO_COARSE_CODES_MAX else 4), AUTO_MIN_SUBQUANTIZERS)
    return next(m for m in range(min(want, dim), dim + 1) if dim % m == 0)


def _min_train(spec: str) -> int:
    """Templates needed to train ``spec`` (0: no training)."""
    m = re.search(r"IVF(\d+)", spec)
    need = 39 * int(m.group(1)) if m else 0
    if "PQ" in spec:
        need = max(need, (16 if "x4" in spec else 256) * 39)
    return need


def _new_faiss(dim: int, spec: str) -> faiss.Index:
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
    """

    def __init__(self, dim: int, index: faiss.Index | None = None, *, spec: str = "Flat",
                 requested: str | None = None, info: dict | None = None):
        self.dim = dim
        self.spec = spec
        self.requested = requested or spec
        self.info = dict(info or {})
        self.index = index if index is not None else _new_faiss(dim, spec)
        self.tombstones = 0
        self._tid2cid = np.full(1024, -1, dtype=np.int64)
        self._per_class = np.zeros(1024, dtype=np.int32)  # live templates by class id
        self._nclasses = 0
        self._max_per_class = 0
        self._max_stale = False
        self._apply_search_params()

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
        size = max(1024, int(tids.max()) + 1 if len(tids) else 0)
        self._tid2cid = np.full(size, -1, dtype=np.int64)
        self._tid2cid[tids] = cids
        self._per_class = np.zeros(1024, dtype=np.int32)
        self._nclasses = self._max_per_class = 0
        self._max_stale = False
        self._count(cids, +1)
        self.tombstones = int(self.index.ntotal) - len(tids)

    def _count(self, cids: np.ndarray, sign: int) -> None:
        """Add (``+1``) or remove (``-1``) one template of each entry of ``cids``."""
        if not len(cids):
            return
        uniq, n = np.unique(cids, return_counts=True)
        if uniq[-1] >= len(self._per_class):
            grown = np.zeros(max(int(uniq[-1]) + 1, 2 * len(self._per_class)), dtype=np.int32)
            grown[: len(self._per_class)] = self._per_class
            self._per_class = grown
        before = self._per_class[uniq]
        after = np.maximum(before + sign * n.astype(np.int32), 0)
        self._per_class[uniq] = after
        self._nclasses += int(np.count_nonzero(after)) - int(np.count_nonzero(before))
        if sign > 0:
            self._max_per_class = max(self._max_per_class, int(after.max()))
        else:
            self._max_stale = True

    def max_per_class(self) -> int:
        if self._max_stale:
            self._max_per_class = int(self._per_class.max())
            self._max_stale = False
        return self._max_per_class

    def add(self, tids: np.ndarray, cids: np.ndarray, vecs: np.ndarray) -> None:
        """Add templates (ids from the store, their class ids, unit float32 rows)."""
        self.add_hidden(tids, vecs)
        self.publish(tids, cids)

    def add_hidden(self, tids: np.ndarray, vecs: np.ndarray) -> None:
        """Put templates into FAISS but not yet into the map: search skips them (they map
        to no class) until :meth:`publish`, or :meth:`discard` if their enroll fails."""
        if not len(tids):
            return
        top = int(tids.max())
        if top >= len(self._tid2cid):
            grown = np.full(max(top + 1, 2 * len(self._tid2cid)), -1, dtype=np.int64)
            grown[: len(self._tid2cid)] = self._tid2cid
            self._tid2cid = grown
        with _threads_for(len(tids)):
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
        self._tid2cid[tids] = cids
        self._count(cids, +1)

    def remove(self, tids: np.ndarray) -> None:
        """Remove templates by id (Flat: from FAISS; others: tombstones, purged once they
        pass :data:`TOMBSTONE_REBUILD` of the index, or on :meth:`Gallery.compact`)."""
        if not len(tids):
            return
        tids = np.ascontiguousarray(tids, dtype=np.int64)
        cids = self._tid2cid[tids]
        if self.exact:
            self.index.remove_ids(tids)
        else:
            self.tombstones += int(np.sum(cids >= 0))
        self._tid2cid[tids] = -1
        self._count(cids[cids >= 0], -1)
        if (self.tombstones > TOMBSTONE_REBUILD * max(int(self.index.ntotal), 1)
                and can_remove_in_place(self.index)):
            self.purge()  # else needs_rebuild() asks for a background rebuild

    def _tombstoned(self) -> np.ndarray:
        return np.flatnonzero(self._tid2cid[self.template_ids()] < 0)

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
            return concrete != "Flat" and self.ntotal >= _min_train(concrete)
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
        ids = self.template_ids()
        ids = ids[ids < len(self._tid2cid)]
        return ids[self._tid2cid[ids] >= 0]

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
        if n < _min_train(concrete):
            info["fallback"] = (f"{concrete} needs >= {_min_train(concrete)} templates to train, "
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
        ivf = faiss.try_extract_index_ivf(self.index.index)
        knob = "nprobe" if ivf is not None else "efSearch"
        limit = ivf.nlist if ivf is not None else 4096
        refine = isinstance(faiss.downcast_index(self.index.index), faiss.IndexRefine)
        for k_factor in (REFINE_K_FACTOR, 32, 128, 512) if refine else (None,):

            def recall_at(value: int, k_factor=k_factor) -> float:
                right = self.probe_answers(probes, self._params(knob, value, k_factor)) == probes.truth
                return float(np.mean(right))

            value, recall = smallest_knob(recall_at, 8 if knob == "nprobe" else 32, limit, TUNE_TARGET)
            if recall >= TUNE_TARGET:
                break
        hits = round(recall * len(probes))
        with lock if lock is not None else contextlib.nullcontext():
            self.info[knob] = value
            if k_factor is not None:
                self.info["k_factor"] = k_factor
            self._apply_search_params()
            self.info.pop("calibrated_to", None)
            if probes.calibrated_to:
                self.info["calibrated_to"] = probes.calibrated_to
            self.info.update(recall_at_1=round(recall, 4),
                             recall_ci95=[round(x, 4) for x in wilson(hits, len(probes))],
                             recall_queries=len(probes), tuned_by=probes.kind,
                             tuned_at=int(self.index.ntotal))
        return self.describe()

    def _params(self, knob: str, value: int, k_factor: int | None) -> faiss.SearchParameters:
        """Search parameters that set ``knob`` (and the re-ranked candidates) for one call."""
        base = (faiss.SearchParametersIVF(nprobe=int(value)) if knob == "nprobe"
                else faiss.SearchParametersHNSW(efSearch=int(value)))
        if k_factor is None:
            return base
        params = faiss.IndexRefineSearchParameters(k_factor=float(k_factor), base_index_params=base)
        params._keep = base  # the SWIG object must outlive the search
        return params

    def probe_answers(self, probes: Probes, params: faiss.SearchParameters | None = None) -> np.ndarray:
        """Best class of each probe by this index (-1 if none), skipping ``probes.exclude``."""
        extra = 1 if probes.exclude is not None else 0
        kk = min(int(self.index.ntotal), 1 + extra + (4 if self.tombstones else 0))
        _, ids = self.index.search(probes.queries, kk, params=params)
        cids = self._tid2cid[np.maximum(ids, 0)]
        skip = (ids < 0) | (cids < 0)
        if probes.exclude is not None:
            skip |= ids == probes.exclude[:, None]
        first = np.argmax(~skip, axis=1)
        found = cids[np.arange(len(ids)), first]
        return np.where(skip.all(axis=1), -1, found)

    def _apply_search_params(self) -> None:
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
        return n * (per + 16) + int(self._tid2cid.nbytes)  # + IDMap2's id array and reverse map

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
