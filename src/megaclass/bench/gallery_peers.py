"""The stores ``megaclass bench gallery`` compares the gallery with, as runners of the
shape in :mod:`megaclass.bench.gallery_measure`: numpy brute force (what DeepFace's
``find`` does), hnswlib and usearch (HNSW), Milvus Lite and LanceDB (IVF_PQ)."""

from __future__ import annotations

import numpy as np

from ..gallery.tuning import K_FACTORS
from .gallery_measure import BenchData, dir_bytes, fit, progress, recall, row, speed, timed

HNSW_M, HNSW_EF_ADD = 32, 100  # graph degree and build-time beam of both HNSW libraries


def run_numpy(d: BenchData) -> dict:
    import time

    path = d.work / "numpy.npy"
    t = time.perf_counter()
    np.save(path, d.tpl)
    build_s = time.perf_counter() - t
    tpl, owner = d.tpl, d.owner

    def search_cls(q):
        return owner[(q @ tpl.T).argmax(axis=1)]

    got = recall(search_cls(d.mated[:200]), d.truth[:200])
    speeds = speed(lambda q: (q @ tpl.T).argmax(axis=1),
                   lambda q: [search_cls(q[i:i + 50]) for i in range(0, len(q), 50)],
                   d.mated, min(d.single, 100), batch=d.mated[:200])
    return row("brute force", {}, got, len(tpl) / build_s, speeds, timed(lambda: np.load(path)),
               path.stat().st_size, False)


def run_hnswlib(d: BenchData) -> dict:
    import time

    import hnswlib

    t = time.perf_counter()
    index = hnswlib.Index(space="ip", dim=d.tpl.shape[1])
    index.init_index(max_elements=len(d.tpl), M=HNSW_M, ef_construction=HNSW_EF_ADD)
    for a in range(0, len(d.tpl), 50_000):
        index.add_items(d.tpl[a:a + 50_000], np.arange(a, min(a + 50_000, len(d.tpl))))
        progress(min(a + 50_000, len(d.tpl)), len(d.tpl), t)
    build_s = time.perf_counter() - t

    def search_cls(q):
        return d.owner[index.knn_query(q, k=1)[0][:, 0].astype(np.int64)]

    ef, _, got = fit(lambda v, kf: index.set_ef(v), search_cls, d, 16, 2048)
    speeds = speed(lambda q: index.knn_query(q, k=1), lambda q: index.knn_query(q, k=1), d.mated, d.single)
    path = d.work / "hnswlib.bin"
    index.save_index(str(path))
    return row(f"HNSW M={HNSW_M}", {"ef": ef}, got, len(d.tpl) / build_s, speeds,
               timed(lambda: hnswlib.Index(space="ip", dim=d.tpl.shape[1]).load_index(str(path))),
               path.stat().st_size, False)


def run_usearch(d: BenchData) -> dict:
    import time

    from usearch.index import Index

    t = time.perf_counter()
    index = Index(ndim=d.tpl.shape[1], metric="ip", connectivity=HNSW_M, expansion_add=HNSW_EF_ADD)
    for a in range(0, len(d.tpl), 50_000):
        index.add(np.arange(a, min(a + 50_000, len(d.tpl))), d.tpl[a:a + 50_000])
        progress(min(a + 50_000, len(d.tpl)), len(d.tpl), t)
    build_s = time.perf_counter() - t

    def set_knobs(v, kf):
        setattr(index, "expansion_search", v)  # noqa: B010 -- a settable property its type stubs call read-only

    def search_cls(q):
        return d.owner[np.asarray(index.search(q, 1).keys).reshape(len(q), -1)[:, 0].astype(np.int64)]

    ef, _, got = fit(set_knobs, search_cls, d, 16, 2048)
    speeds = speed(lambda q: index.search(q, 1), lambda q: index.search(q, 1), d.mated, d.single)
    path = d.work / "usearch.bin"
    index.save(str(path))
    return row(f"HNSW M={HNSW_M}", {"expansion_search": ef}, got, len(d.tpl) / build_s, speeds,
               timed(lambda: Index.restore(str(path))), path.stat().st_size, False)


def run_milvus(d: BenchData) -> dict:
    import time

    from pymilvus import MilvusClient

    path = d.work / "milvus.db"
    client = MilvusClient(str(path))
    client.create_collection("g", dimension=d.tpl.shape[1], metric_type="IP")
    t = time.perf_counter()
    for a in range(0, len(d.tpl), 5000):
        client.insert("g", [{"id": int(i), "vector": d.tpl[i].tolist()}
                            for i in range(a, min(a + 5000, len(d.tpl)))])
        progress(min(a + 5000, len(d.tpl)), len(d.tpl), t)
    build_s = time.perf_counter() - t

    def search_cls(q):
        res = client.search("g", data=q.tolist(), limit=1)
        return d.owner[np.array([r[0]["id"] for r in res], dtype=np.int64)]

    n_q = max(10, min(200, 20_000_000 // len(d.tpl)))  # each search scans everything: cap the time
    got = recall(search_cls(d.mated[:n_q]), d.truth[:n_q])
    speeds = speed(lambda q: client.search("g", data=q.tolist(), limit=1), search_cls, d.mated,
                   min(d.single, n_q // 2), batch=d.mated[:n_q])
    client.close()
    size = dir_bytes(path) if path.is_dir() else path.stat().st_size
    return row("Milvus Lite default", {}, got, len(d.tpl) / build_s, speeds,
               timed(lambda: MilvusClient(str(path)).close()), size, True)


def vector_query(table, vector):
    """LanceDB's vector query builder for ``vector`` (``Table.search`` is typed as returning
    any builder; for a vector it is the one with ``distance_type``, ``nprobes``, ...)."""
    from lancedb.query import LanceVectorQueryBuilder

    q = table.search(vector)
    assert isinstance(q, LanceVectorQueryBuilder), type(q)
    return q


def run_lancedb(d: BenchData) -> dict:
    """LanceDB (embedded, on disk) with its IVF_PQ index at its default partitions and
    code size, dot product; ``nprobes`` and ``refine_factor`` fitted like raw FAISS's."""
    import time

    import lancedb
    import pyarrow as pa

    path = d.work / "lancedb"
    db = lancedb.connect(str(path))
    dim, tpl = d.tpl.shape[1], d.tpl

    def batch(a: int, b: int) -> pa.Table:
        flat = pa.array(np.ascontiguousarray(tpl[a:b]).reshape(-1), type=pa.float32())
        return pa.table({"id": pa.array(np.arange(a, b), type=pa.int64()),
                         "vector": pa.FixedSizeListArray.from_arrays(flat, dim)})

    t = time.perf_counter()
    table = db.create_table("g", data=batch(0, min(100_000, len(tpl))))
    for a in range(100_000, len(tpl), 100_000):
        table.add(batch(a, min(a + 100_000, len(tpl))))
        progress(min(a + 100_000, len(tpl)), len(tpl), t)
    table.create_index(metric="dot", index_type="IVF_PQ")
    build_s = time.perf_counter() - t
    ks = list(K_FACTORS)  # every re-rank candidate count the gallery tries, smallest first
    knobs = {"nprobe": 8, "k_factor": ks[0]}  # LanceDB's nprobes and refine_factor

    def set_knobs(v, kf):
        knobs.update(nprobe=v, k_factor=kf)

    def query(v):
        return (vector_query(table, v).distance_type("dot").nprobes(knobs["nprobe"])
                .refine_factor(knobs["k_factor"]).limit(1).select(["id"]).to_arrow())

    def search_cls(q):
        return d.owner[np.array([query(v)["id"][0].as_py() for v in q], dtype=np.int64)]

    _, _, got = fit(set_knobs, search_cls, d, 8, 4096, ks)
    speeds = speed(lambda q: query(q[0]), search_cls, d.mated, d.single)

    def reopen():
        table = lancedb.connect(str(path)).open_table("g")
        vector_query(table, d.mated[0]).distance_type("dot").limit(1).to_arrow()

    return row("IVF_PQ (LanceDB defaults)", {"nprobes": knobs["nprobe"], "refine_factor": knobs["k_factor"]},
               got, len(tpl) / build_s, speeds, timed(reopen), dir_bytes(path), False)


RUNNERS = {"numpy": run_numpy, "hnswlib": run_hnswlib, "usearch": run_usearch,
           "milvus": run_milvus, "lancedb": run_lancedb}
