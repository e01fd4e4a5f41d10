"""The gallery on a real Milvus server beside the local gallery and raw FAISS, same data,
same process: ``python -m megaclass.bench.gallery_milvus --classes 100000``.

Each system gets the same templates (``templates`` per class: a random class centre plus
noise, unit rows) and the same mated probes (another noisy draw of a centre). Reported per
system: enroll throughput (templates/s, each write durable when it returns), recall@1 by
class against exact search, single-query p50/p99 latency and batched throughput at the
knob that reaches recall@1 >= 0.99. ``megaclass-milvus`` starts the ``milvus`` package's
standalone server in the work folder (or uses ``--uri``).

:func:`run_megaclass_milvus` has the runner shape of ``megaclass bench gallery`` (an
object with ``tpl, owner, mated, truth, work, single`` in, a result dict out), so that
bench can list it as ``--system megaclass-milvus``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np

TARGET = 0.99


def _speed(search_one, search_batch, q: np.ndarray, single: int) -> dict:
    lat = []
    for v in q[:single]:
        t = time.perf_counter()
        search_one(v[None, :])
        lat.append((time.perf_counter() - t) * 1000)
    t = time.perf_counter()
    search_batch(q)
    return {"p50_ms": float(np.percentile(lat, 50)), "p99_ms": float(np.percentile(lat, 99)),
            "batch_qps": len(q) / (time.perf_counter() - t)}


def make_data(classes: int, templates: int, dim: int, queries: int, seed: int = 0, work: Path = Path(".")):
    rng = np.random.default_rng(seed)

    def unit(x):
        return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)

    centre = unit(rng.normal(size=(classes, dim)).astype(np.float32))
    noise = 0.6 / np.sqrt(dim)
    tpl = unit(np.concatenate([centre + noise * rng.normal(size=centre.shape).astype(np.float32)
                               for _ in range(templates)]))  # row t * classes + c
    owner = np.tile(np.arange(classes), templates)
    cls = rng.choice(classes, size=queries, replace=False)
    mated = unit(centre[cls] + noise * rng.normal(size=(queries, dim)).astype(np.float32))
    truth = np.empty(queries, np.int64)
    for a in range(0, queries, 256):  # exact best class
        truth[a:a + 256] = owner[(mated[a:a + 256] @ tpl.T).argmax(axis=1)]
    return SimpleNamespace(tpl=tpl, owner=owner, mated=mated, truth=truth, work=work,
                           single=min(300, queries))


def _items(d, a: int, b: int, classes: int):
    t = len(d.tpl) // classes
    return [(str(c), d.tpl[[k * classes + c for k in range(t)]]) for c in range(a, b)]


def run_megaclass_milvus(d, uri: str | None = None) -> dict:
    """Enroll every class into a Milvus gallery (a fresh collection), fit its index to
    recall@1 >= 0.99 on the mated probes, and time searches."""
    from megaclass.gallery.milvus import MilvusGallery

    server = None
    if uri is None:
        from megaclass.gallery.milvus.standalone import MilvusProcess

        server = MilvusProcess(Path(d.work) / "milvus-server")
        server.start()
        uri = f"{server.uri_base}/bench"
    try:
        classes = int(d.owner.max()) + 1
        g = MilvusGallery.open(uri + "?timeout=600", dim=d.tpl.shape[1])
        t0 = time.perf_counter()
        for a in range(0, classes, 2000):
            g.enroll_many(_items(d, a, min(a + 2000, classes), classes))
        enroll_s = time.perf_counter() - t0
        tuned = g.tune(d.mated[:200], target=TARGET)

        def best(q):
            return np.array([int(m[0].label) for m in g.search(q, k=1)])

        got = float(np.mean(best(d.mated) == d.truth))
        speeds = _speed(lambda q: g.search(q, k=1), lambda q: [g.search(q[i:i + 100], k=1)
                                                             for i in range(0, len(q), 100)],
                        d.mated, d.single)
        g.close()
        t = time.perf_counter()
        MilvusGallery.open(uri).close()
        return {"index": f"milvus:{tuned['index']}", "knob": tuned["search_params"], "recall_at_1": got,
                "enroll_templates_per_s": len(d.tpl) / enroll_s, **speeds,
                "open_s": time.perf_counter() - t, "index_build_s": tuned["build_s"], "durable": True}
    finally:
        if server is not None:
            server.stop()


def run_local(d) -> dict:
    from megaclass.gallery import Gallery

    classes = int(d.owner.max()) + 1
    path = Path(d.work) / "local-gallery"
    g = Gallery.open(path, dim=d.tpl.shape[1])
    t0 = time.perf_counter()
    for a in range(0, classes, 2000):
        g.enroll_many(_items(d, a, min(a + 2000, classes), classes))
    enroll_s = time.perf_counter() - t0
    g.wait_for_index()
    g.tune(d.mated[:200])

    def best(q):
        return np.array([int(m[0].label) for m in g.search(q, k=1)])

    got = float(np.mean(best(d.mated) == d.truth))
    speeds = _speed(lambda q: g.search(q, k=1), lambda q: g.search(q, k=1), d.mated, d.single)
    st = g.stats()
    g.close()
    return {"index": str(st.get("index")), "recall_at_1": got,
            "enroll_templates_per_s": len(d.tpl) / enroll_s, **speeds, "durable": True}


def run_faiss(d) -> dict:
    import faiss

    dim = d.tpl.shape[1]
    t0 = time.perf_counter()
    index = faiss.IndexHNSWFlat(dim, 32, faiss.METRIC_INNER_PRODUCT)
    index.hnsw.efConstruction = 100
    index.add(np.ascontiguousarray(d.tpl))
    build = time.perf_counter() - t0
    ef, got = 16, 0.0
    while True:
        index.hnsw.efSearch = ef
        got = float(np.mean(d.owner[index.search(d.mated, 1)[1][:, 0]] == d.truth))
        if got >= TARGET or ef >= 4096:
            break
        ef *= 2
    speeds = _speed(lambda q: index.search(q, 1), lambda q: index.search(q, 1), d.mated, d.single)
    return {"index": "HNSW32 (in memory, not durable)", "knob": {"efSearch": ef}, "recall_at_1": got,
            "enroll_templates_per_s": len(d.tpl) / build, **speeds, "durable": False}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--classes", type=int, default=100_000)
    p.add_argument("--templates", type=int, default=2)
    p.add_argument("--dim", type=int, default=128)
    p.add_argument("--queries", type=int, default=1000)
    p.add_argument("--uri", default=None, help="an existing milvus://host:port (else one is started)")
    p.add_argument("--work", default="bench-output/gallery-milvus")
    p.add_argument("--out", default="docs/bench/gallery_milvus.json")
    p.add_argument("--systems", default="faiss,megaclass,megaclass-milvus")
    a = p.parse_args(argv)
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    d = make_data(a.classes, a.templates, a.dim, a.queries, work=work)
    runners = {"faiss": run_faiss, "megaclass": run_local,
               "megaclass-milvus": lambda d: run_megaclass_milvus(d, a.uri and a.uri.rstrip("/") + "/bench")}
    out = {"classes": a.classes, "templates_per_class": a.templates, "dim": a.dim, "queries": a.queries,
           "target_recall_at_1": TARGET, "systems": {}}
    for name in a.systems.split(","):
        t = time.perf_counter()
        out["systems"][name] = runners[name](d)
        out["systems"][name]["wall_s"] = round(time.perf_counter() - t, 1)
        print(name, json.dumps(out["systems"][name]), flush=True)
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
