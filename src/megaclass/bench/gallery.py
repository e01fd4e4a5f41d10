"""``megaclass bench gallery``: megaclass's gallery against the stores users would pick instead.

Data (:mod:`megaclass.bench.gallery_data`): by default real embeddings, glyph classes
embedded by a trained encoder (``templates`` drawings per class as templates, another as
the mated probe, never-enrolled classes as non-mated probes); ``data="random"`` is the
stress test of clustered random unit vectors. Recall@1 is measured against exact search
and identification accuracy against the true class, for every system. Each system runs
in its own subprocess (clean peak RSS, a crash cannot take the run down) on the same files:

- ``megaclass``: Gallery (SQLite + FAISS, durable batched enroll), index ``auto``;
- ``faiss``: raw FAISS with the same index spec and search knob (the floor);
- ``numpy``: brute-force ``templates @ query`` (what DeepFace's ``find`` does);
- ``hnswlib`` and ``usearch``: HNSW libraries; ``milvus``: Milvus Lite (pymilvus);
  ``lancedb``: LanceDB's IVF_PQ (Chroma installs here too, but is HNSW again, as hnswlib).

Approximate systems raise their search knob until recall@1 (best *class* equal to exact
search's) reaches 0.99; latency is measured there. Missing optional packages are
reported as skipped. Results: ``gallery_bench.json`` + ``gallery_bench.png``.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ..errors import ConfigError

SYSTEMS = ("megaclass", "faiss", "numpy", "hnswlib", "usearch", "milvus", "lancedb")
TARGET = 0.99


@dataclass
class GalleryBenchConfig:
    classes: int = 100_000
    dim: int = 256
    templates: int = 2
    queries: int = 1000
    non_mated: int = 500
    single: int = 300  # single-query latency samples
    seed: int = 0
    index: str = "auto"  # megaclass's index spec; raw FAISS mirrors what it settles on
    data: str = "embeddings"  # or "random" (the stress test)
    model: str | None = None  # encoder for "embeddings" (None: the cached demo-recipe model)
    cache: str = "bench-output/gallery-data"  # model + embeddings, reused by later runs
    timeout: float = 3600.0  # seconds per system; a system that takes longer is reported as such
    peer_timeout: float | None = None  # for hnswlib, usearch, milvus, lancedb (None: ``timeout``)


def make_data(cfg: GalleryBenchConfig, path: Path, log=print) -> Path:
    """The benchmark's data folder for ``cfg`` (see :mod:`megaclass.bench.gallery_data`):
    random vectors written to ``path``, or cached embeddings (their folder is returned)."""
    from . import gallery_data

    if cfg.data == "random":
        gallery_data.random_data(cfg.classes, cfg.dim, cfg.templates, cfg.queries, cfg.non_mated,
                                 cfg.seed, path)
        return path
    if cfg.data != "embeddings":
        raise ConfigError(f"bench gallery data must be 'embeddings' or 'random', got {cfg.data!r}")
    cache = Path(cfg.cache)
    model = gallery_data.resolve_model(cfg.model, cache, log)
    return gallery_data.embedding_data(model, cfg.classes, cfg.templates, cfg.queries, cfg.non_mated,
                                       cfg.seed, cache, log)


def _percentiles(samples: list[float]) -> dict:
    a = np.asarray(samples) * 1000
    return {"p50_ms": float(np.percentile(a, 50)), "p99_ms": float(np.percentile(a, 99))}


def _time_single(search, queries: np.ndarray, n: int) -> dict:
    lat = []
    for q in queries[:n]:
        t = time.perf_counter()
        search(q[None, :])
        lat.append(time.perf_counter() - t)
    return _percentiles(lat)


def _batch_qps(search_batch, queries: np.ndarray) -> float:
    """Queries per second of one batched call."""
    t = time.perf_counter()
    search_batch(queries)
    return len(queries) / (time.perf_counter() - t)


def _rss_mb() -> float:
    """Peak resident set size of this process (MiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _current_rss_mb() -> float:
    """Anonymous resident memory (MiB): the process's own heap, not the mapped data file."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) / 1024
    raise OSError("no RssAnon in /proc/self/status")


def _dir_bytes(p: Path) -> int:
    return sum(f.stat().st_size for f in p.rglob("*") if f.is_file())


def run_system(name: str, data_path: Path, work: Path, single: int) -> dict:
    """Run one system in this process; returns its measurements. The templates are
    memory-mapped (page cache, not this process's heap): RSS is the system's own."""
    tpl = np.load(data_path / "templates.npy", mmap_mode="r")
    owner, mated, truth = (np.load(data_path / f"{k}.npy") for k in ("owner", "mated", "truth"))
    runner = globals()[f"_run_{name}"]
    base = _current_rss_mb()  # interpreter + imports + the small arrays: same for every system
    _LAST_PRED.clear()
    out = runner(tpl, owner, mated, truth, work, single)
    if _LAST_PRED:  # identification accuracy: the best class against the probe's true class
        pred = _LAST_PRED[-1]
        true_cls = np.load(data_path / "mated_cls.npy")[: len(pred)]
        out["accuracy"] = float(np.mean(pred == true_cls))
        out["exact_accuracy"] = float(np.mean(truth[: len(pred)] == true_cls))
    out["peak_rss_mb"] = _rss_mb()
    out["rss_over_data_mb"] = out.pop("rss_after_mb", _current_rss_mb()) - base
    return out


_LAST_PRED: list[np.ndarray] = []  # each system's last predictions (at its final knobs)


def _recall(pred_cls: np.ndarray, truth: np.ndarray) -> float:
    """Recall@1 against exact search; remembers the predictions for the accuracy."""
    _LAST_PRED.append(np.asarray(pred_cls))
    return float(np.mean(pred_cls == truth))


def _tune(set_knob, search_cls, mated, truth, start: int, limit: int) -> tuple[int, float]:
    """Smallest knob with recall@1 >= TARGET (the gallery's own doubling + bisection)."""
    from megaclass.gallery.tuning import smallest_knob

    def recall_at(v: int) -> float:
        set_knob(v)
        return _recall(search_cls(mated), truth)

    knob, recall = smallest_knob(recall_at, start, limit, TARGET)
    set_knob(knob)
    _recall(search_cls(mated), truth)  # the predictions at the chosen knob, for the accuracy
    return knob, recall


K_FACTORS = (8, 32, 128, 512)  # exact re-rank candidates per result, as the gallery's own tuning


def _tune_refined(set_knob, set_k_factor, knobs: dict, search_cls, mated, truth, limit: int) -> float:
    """:func:`_tune` of ``knobs["nprobe"]``, raising ``knobs["k_factor"]`` (re-ranked
    candidates) when even ``limit`` misses the target: 4-bit codes can be too coarse."""
    start_kf, start = int(knobs.get("k_factor") or 0), int(knobs["nprobe"])
    for kf in [k for k in K_FACTORS if k >= start_kf] if start_kf else [None]:
        if kf is not None:
            set_k_factor(kf)
            knobs["k_factor"] = kf
        knobs["nprobe"], recall = _tune(set_knob, search_cls, mated, truth, start, limit)
        if recall >= TARGET:
            break
    return recall


def _progress(done: int, total: int, started: float) -> None:
    """A progress line on stderr: what a timed-out run reports as how far it got."""
    print(json.dumps({"built": done, "of": total, "seconds": time.perf_counter() - started}),
          file=sys.stderr, flush=True)


def _run_megaclass(tpl, owner, mated, truth, work, single):
    import faiss

    from megaclass.gallery import Gallery

    path = work / "megaclass"
    n_cls = int(owner.max()) + 1
    per = len(tpl) // n_cls
    by_class = tpl.reshape(per, n_cls, -1)
    t = time.perf_counter()
    g = Gallery.open(path, dim=tpl.shape[1], index=os.environ.get("MEGACLASS_BENCH_INDEX", "auto"))
    g.show_progress = False
    step = 10_000
    for a in range(0, n_cls, step):  # one durable transaction per 10k classes
        block = np.ascontiguousarray(by_class[:, a:a + step].transpose(1, 0, 2))  # (classes, per, d)
        g.enroll_many((f"c{a + j}", block[j]) for j in range(len(block)))
        _progress(min(a + step, n_cls), n_cls, t)
    enroll_s = time.perf_counter() - t
    g.wait_for_index()  # background upgrade / re-fit of the index the enrolls called for
    ready_s = time.perf_counter() - t
    rebuilds = len(g.maintenance_log)
    single_t = time.perf_counter()
    for i in range(200):  # every call acknowledged only after its own durable commit
        g.enroll(f"extra{i}", tpl[i])
    single_s = time.perf_counter() - single_t
    for i in range(200):
        g.erase(f"extra{i}")
    g.wait_for_index()
    info = g.stats()
    ix = g._index

    def search_cls(q):
        return np.array([int(m[0].label[1:]) for m in g.search(q, k=1)])

    own = {"recall_reported": info.get("recall_at_1", 1.0), "reported_ci95": info.get("recall_ci95"),
           "tuned_by": info.get("tuned_by", "exact"), "calibrated_to": info.get("calibrated_to"),
           "own_knobs": {k: info[k] for k in ("nprobe", "efSearch", "k_factor") if k in info},
           "recall_at_own_knobs": float(np.mean(search_cls(mated) == truth))}
    if not ix.exact:
        knob_name = "nprobe" if "nprobe" in ix.info else "efSearch"

        def set_knob(v, name=knob_name):
            ix.info[name] = v
            ix._apply_search_params()

        if knob_name == "nprobe":
            ivf = faiss.extract_index_ivf(ix.index)
            knobs = {k: ix.info[k] for k in ("nprobe", "k_factor") if k in ix.info}
            recall = _tune_refined(set_knob, lambda kf: set_knob(kf, "k_factor"), knobs, search_cls,
                                   mated, truth, ivf.nlist)
            knob = knobs["nprobe"]
        else:
            knob, recall = _tune(set_knob, search_cls, mated, truth, int(ix.info[knob_name]), 4096)
    else:
        knob_name, knob, recall = None, None, _recall(search_cls(mated), truth)
    lat = _time_single(lambda q: g.search(q, k=1), mated, single)
    batch_qps = _batch_qps(lambda q: g.search(q, k=1), mated)
    g.close()
    t = time.perf_counter()
    g2 = Gallery.open(path)
    open_s = time.perf_counter() - t
    g2.close()
    knobs = {knob_name: knob} if knob_name else {}
    if "k_factor" in ix.info:
        knobs["k_factor"] = ix.info["k_factor"]
    (work / "megaclass.json").write_text(json.dumps({"index": info["index"], "knob": knobs}))
    return {"index": info["index"], "knob": knobs, **own,
            "recall_at_1": recall, "enroll_templates_per_s": len(tpl) / enroll_s,
            "index_ready_s": ready_s, "index_rebuilds": rebuilds,
            "single_enroll_per_s": 200 / single_s, **lat, "batch_qps": batch_qps,
            "open_s": open_s, "disk_mb": _dir_bytes(path) / 2**20, "durable": True}


def _faiss_spec(work: Path) -> tuple[str, dict]:
    """The index spec and search knob megaclass settled on (raw FAISS does the same work)."""
    meta = json.loads((work / "megaclass.json").read_text())
    return meta["index"], meta["knob"]


def _run_faiss(tpl, owner, mated, truth, work, single):
    import faiss

    spec, info = _faiss_spec(work)
    t = time.perf_counter()
    inner = faiss.IndexFlatIP(tpl.shape[1]) if spec == "Flat" else faiss.index_factory(
        tpl.shape[1], spec, faiss.METRIC_INNER_PRODUCT)
    if not inner.is_trained:
        rng = np.random.default_rng(0)
        inner.train(tpl[rng.choice(len(tpl), min(len(tpl), 200_000), replace=False)])
    index = faiss.IndexIDMap2(inner)
    index.add_with_ids(tpl, np.arange(len(tpl), dtype=np.int64))
    build_s = time.perf_counter() - t
    if "nprobe" in info:  # the same search knob megaclass settled on: same work per query
        faiss.extract_index_ivf(index).nprobe = int(info["nprobe"])
    if "efSearch" in info:
        faiss.downcast_index(inner).hnsw.efSearch = int(info["efSearch"])
    if "k_factor" in info:  # "...,RFlat": as many candidates re-ranked exactly
        faiss.downcast_index(inner).k_factor = float(info["k_factor"])
    path = work / "faiss.index"
    faiss.write_index(index, str(path))

    def search_cls(q):
        return owner[index.search(q, 1)[1][:, 0]]

    recall = _recall(search_cls(mated), truth)
    if recall < TARGET and "nprobe" in info:  # its own k-means partitions differ: equal recall first
        ivf = faiss.extract_index_ivf(index)

        def set_knob(v):
            ivf.nprobe = v

        def set_k_factor(kf):
            faiss.downcast_index(inner).k_factor = float(kf)

        recall = _tune_refined(set_knob, set_k_factor, info, search_cls, mated, truth, ivf.nlist)
    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)  # single queries: one thread is FAISS's fastest setting
    lat = _time_single(lambda q: index.search(q, 1), mated, single)
    faiss.omp_set_num_threads(threads)
    batch_qps = _batch_qps(lambda q: index.search(q, 1), mated)
    t = time.perf_counter()
    faiss.read_index(str(path))
    return {"index": spec, "knob": info, "recall_at_1": recall,
            "enroll_templates_per_s": len(tpl) / build_s, **lat, "batch_qps": batch_qps,
            "open_s": time.perf_counter() - t, "disk_mb": path.stat().st_size / 2**20,
            "durable": False}


def _run_numpy(tpl, owner, mated, truth, work, single):
    path = work / "numpy.npy"
    t = time.perf_counter()
    np.save(path, tpl)
    build_s = time.perf_counter() - t

    def search_cls(q):
        return owner[(q @ tpl.T).argmax(axis=1)]

    recall = _recall(search_cls(mated[:200]), truth[:200])
    lat = _time_single(lambda q: (q @ tpl.T).argmax(axis=1), mated, min(single, 100))
    batch_qps = _batch_qps(lambda q: [search_cls(q[i:i + 50]) for i in range(0, len(q), 50)],
                           mated[:200])
    t = time.perf_counter()
    np.load(path)
    return {"index": "brute force", "knob": {}, "recall_at_1": recall,
            "enroll_templates_per_s": len(tpl) / build_s, **lat, "batch_qps": batch_qps,
            "open_s": time.perf_counter() - t, "disk_mb": path.stat().st_size / 2**20,
            "durable": False}


def _run_hnswlib(tpl, owner, mated, truth, work, single):
    import hnswlib

    t = time.perf_counter()
    index = hnswlib.Index(space="ip", dim=tpl.shape[1])
    index.init_index(max_elements=len(tpl), M=32, ef_construction=100)
    for a in range(0, len(tpl), 50_000):
        index.add_items(tpl[a:a + 50_000], np.arange(a, min(a + 50_000, len(tpl))))
        _progress(min(a + 50_000, len(tpl)), len(tpl), t)
    build_s = time.perf_counter() - t

    def search_cls(q):
        return owner[index.knn_query(q, k=1)[0][:, 0].astype(np.int64)]

    ef, recall = _tune(index.set_ef, search_cls, mated, truth, 16, 2048)
    lat = _time_single(lambda q: index.knn_query(q, k=1), mated, single)
    batch_qps = _batch_qps(lambda q: index.knn_query(q, k=1), mated)
    path = work / "hnswlib.bin"
    index.save_index(str(path))
    t = time.perf_counter()
    other = hnswlib.Index(space="ip", dim=tpl.shape[1])
    other.load_index(str(path))
    return {"index": "HNSW M=32", "knob": {"ef": ef}, "recall_at_1": recall,
            "enroll_templates_per_s": len(tpl) / build_s, **lat, "batch_qps": batch_qps,
            "open_s": time.perf_counter() - t, "disk_mb": path.stat().st_size / 2**20,
            "durable": False}


def _run_usearch(tpl, owner, mated, truth, work, single):
    from usearch.index import Index

    t = time.perf_counter()
    index = Index(ndim=tpl.shape[1], metric="ip", connectivity=32, expansion_add=100)
    for a in range(0, len(tpl), 50_000):
        index.add(np.arange(a, min(a + 50_000, len(tpl))), tpl[a:a + 50_000])
        _progress(min(a + 50_000, len(tpl)), len(tpl), t)
    build_s = time.perf_counter() - t

    def set_knob(v):
        index.expansion_search = v

    def search_cls(q):
        return owner[np.asarray(index.search(q, 1).keys).reshape(len(q), -1)[:, 0].astype(np.int64)]

    ef, recall = _tune(set_knob, search_cls, mated, truth, 16, 2048)
    lat = _time_single(lambda q: index.search(q, 1), mated, single)
    batch_qps = _batch_qps(lambda q: index.search(q, 1), mated)
    path = work / "usearch.bin"
    index.save(str(path))
    t = time.perf_counter()
    Index.restore(str(path))
    return {"index": "HNSW M=32", "knob": {"expansion_search": ef}, "recall_at_1": recall,
            "enroll_templates_per_s": len(tpl) / build_s, **lat, "batch_qps": batch_qps,
            "open_s": time.perf_counter() - t, "disk_mb": path.stat().st_size / 2**20,
            "durable": False}


def _run_milvus(tpl, owner, mated, truth, work, single):
    from pymilvus import MilvusClient

    path = work / "milvus.db"
    client = MilvusClient(str(path))
    client.create_collection("g", dimension=tpl.shape[1], metric_type="IP")
    t = time.perf_counter()
    for a in range(0, len(tpl), 5000):
        client.insert("g", [{"id": int(i), "vector": tpl[i].tolist()}
                            for i in range(a, min(a + 5000, len(tpl)))])
        _progress(min(a + 5000, len(tpl)), len(tpl), t)
    build_s = time.perf_counter() - t

    def search_cls(q):
        res = client.search("g", data=q.tolist(), limit=1)
        return owner[np.array([r[0]["id"] for r in res], dtype=np.int64)]

    n_q = max(10, min(200, 20_000_000 // len(tpl)))  # each search scans everything: cap the time
    recall = _recall(search_cls(mated[:n_q]), truth[:n_q])
    lat = _time_single(lambda q: client.search("g", data=q.tolist(), limit=1), mated,
                       min(single, n_q // 2))
    batch_qps = _batch_qps(search_cls, mated[:n_q])
    client.close()
    t = time.perf_counter()
    MilvusClient(str(path)).close()
    return {"index": "Milvus Lite default", "knob": {}, "recall_at_1": recall,
            "enroll_templates_per_s": len(tpl) / build_s, **lat, "batch_qps": batch_qps,
            "open_s": time.perf_counter() - t, "disk_mb": _dir_bytes(path) / 2**20
            if path.is_dir() else path.stat().st_size / 2**20, "durable": True}


def _run_lancedb(tpl, owner, mated, truth, work, single):
    """LanceDB (embedded, on disk) with its IVF_PQ index at its default partitions and
    code size, dot product; ``nprobes`` and ``refine_factor`` tuned like raw FAISS's."""
    import lancedb
    import pyarrow as pa

    path = work / "lancedb"
    db = lancedb.connect(str(path))
    d = tpl.shape[1]

    def batch(a: int, b: int) -> pa.Table:
        flat = pa.array(np.ascontiguousarray(tpl[a:b]).reshape(-1), type=pa.float32())
        return pa.table({"id": pa.array(np.arange(a, b), type=pa.int64()),
                         "vector": pa.FixedSizeListArray.from_arrays(flat, d)})

    t = time.perf_counter()
    table = db.create_table("g", data=batch(0, min(100_000, len(tpl))))
    for a in range(100_000, len(tpl), 100_000):
        table.add(batch(a, min(a + 100_000, len(tpl))))
        _progress(min(a + 100_000, len(tpl)), len(tpl), t)
    table.create_index(metric="dot", index_type="IVF_PQ")
    build_s = time.perf_counter() - t
    knobs = {"nprobe": 8, "k_factor": K_FACTORS[0]}  # LanceDB's nprobes and refine_factor

    def query(v):
        return (table.search(v).distance_type("dot").nprobes(knobs["nprobe"])
                .refine_factor(knobs["k_factor"]).limit(1).select(["id"]).to_arrow())

    def search_cls(q):
        return owner[np.array([query(v)["id"][0].as_py() for v in q], dtype=np.int64)]

    recall = _tune_refined(lambda v: knobs.__setitem__("nprobe", v),
                           lambda kf: knobs.__setitem__("k_factor", kf), knobs, search_cls,
                           mated, truth, 4096)
    lat = _time_single(lambda q: query(q[0]), mated, single)
    batch_qps = _batch_qps(search_cls, mated)
    t = time.perf_counter()
    lancedb.connect(str(path)).open_table("g").search(mated[0]).distance_type("dot").limit(1).to_arrow()
    return {"index": "IVF_PQ (LanceDB defaults)", "recall_at_1": recall,
            "knob": {"nprobes": knobs["nprobe"], "refine_factor": knobs["k_factor"]},
            "enroll_templates_per_s": len(tpl) / build_s, **lat, "batch_qps": batch_qps,
            "open_s": time.perf_counter() - t, "disk_mb": _dir_bytes(path) / 2**20, "durable": False}


def _how_far(err: str) -> str:
    """``"; had built N of M in T s (R templates/s)"`` from a run's last progress line."""
    got = [json.loads(line) for line in err.splitlines() if line.startswith('{"built"')]
    if not got:
        return ""
    last = got[-1]
    if last["built"] == last["of"]:
        return (f"; built all {last['of']:,} in {last['seconds']:.0f} s "
                f"({last['of'] / max(last['seconds'], 1e-9):,.0f} templates/s), then ran out of time")
    return (f"; had built {last['built']:,} of {last['of']:,} in {last['seconds']:.0f} s "
            f"({last['built'] / max(last['seconds'], 1e-9):,.0f} templates/s)")


def _run_subprocess(name: str, work: Path, data: Path, cfg: GalleryBenchConfig) -> dict:
    """One system in its own process, killed after ``cfg.timeout`` seconds."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "MEGACLASS_BENCH_INDEX": cfg.index}
    proc = subprocess.Popen([sys.executable, "-m", "megaclass.bench.gallery", name, str(data),
                             str(work), str(cfg.single)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env)
    limit = cfg.timeout if name in ("megaclass", "faiss", "numpy") or cfg.peer_timeout is None \
        else cfg.peer_timeout
    try:
        out, err = proc.communicate(timeout=limit)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        return {"skipped": f"timed out after {limit:.0f} s{_how_far(err)}"}
    if proc.returncode == 0:
        return json.loads(out.strip().splitlines()[-1])
    reached = _how_far(err)
    if proc.returncode < 0:  # killed: -9 without a timeout here is the kernel's OOM killer
        why = "SIGKILL (out of memory?)" if proc.returncode == -9 else f"signal {-proc.returncode}"
        return {"skipped": f"killed by {why}{reached}"}
    lines = [line for line in err.strip().splitlines()
             if not line.startswith('{"built"') and "WARNING" not in line]
    return {"skipped": (lines or ["failed"])[-1][:300] + reached}


def run_bench(cfg: GalleryBenchConfig, out: Path, systems=SYSTEMS, log=print) -> dict:
    """Generate data, run every system in a subprocess, write JSON + PNG, return results."""
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="mc-gbench-"))
    try:
        t = time.perf_counter()
        data = make_data(cfg, work / "data", log)
        dim = int(np.load(data / "templates.npy", mmap_mode="r").shape[1])
        log(f"data ({cfg.data}): {cfg.classes:,} classes x {cfg.templates} templates, D={dim} "
            f"({time.perf_counter() - t:.1f}s)")
        results: dict = {}
        order = ["megaclass"] + [s for s in systems if s != "megaclass"]  # faiss reuses its spec
        for name in order:
            if name not in systems and name != "megaclass":
                continue
            log(f"running {name} ...")
            results[name] = _run_subprocess(name, work, data, cfg)
            log(f"  {name}: {results[name]}")
        report = {"config": dict(asdict(cfg), dim=dim), "target_recall": TARGET, "results": results}
        if cfg.data == "embeddings":
            report["data"] = json.loads((data / "model.json").read_text())
        (out / "gallery_bench.json").write_text(json.dumps(report, indent=2))
        _plot(report, out / "gallery_bench.png")
        return report
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    res = {k: v for k, v in report["results"].items() if "p50_ms" in v}
    if not res:
        return
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    names = list(res)
    axes[0].bar(names, [res[n]["p50_ms"] for n in names])
    axes[0].set_ylabel("single-query p50 (ms)")
    axes[0].set_yscale("log")
    axes[1].bar(names, [res[n]["enroll_templates_per_s"] for n in names])
    axes[1].set_ylabel("enroll / build (templates/s)")
    axes[1].set_yscale("log")
    c = report["config"]
    fig.suptitle(f"gallery bench ({c.get('data', 'random')}): {c['classes']:,} classes x "
                 f"{c['templates']} templates, D={c['dim']}")
    for ax in axes:
        ax.tick_params(axis="x", rotation=30)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":  # one system, in its own process
    name, data_path, work, single = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3]), int(sys.argv[4])
    print(json.dumps(run_system(name, data_path, work, single)))
