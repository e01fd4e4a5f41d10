"""Where should the Milvus gallery's ``auto`` index switch from FLAT to HNSW?

Measures, on the real Milvus standalone server (the ``milvus`` package's binary, started
here on free ports, no other collection loaded) and the benchmark's real embeddings
(``megaclass bench gallery``'s cache: the reference model's 128-d embeddings of glyph
classes, 2 templates per class, a third drawing as the mated probe), at each gallery size:
FLAT and HNSW (after the gallery's own ``tune()``) single-query p50/p99 through
``MilvusGallery.search`` and recall@1 against exact search (numpy over the same templates).

Per size, two galleries of the same classes, each enrolled with ``enroll_many`` (2,000
classes a write) and tuned as a user would: ``tune(index="FLAT")`` and ``tune(index="HNSW")``
(M 16, efConstruction 200, ``ef`` fitted by the gallery on its own noisy probes). The
classes are the 1,000 mated probes' classes plus the first others, so every mated probe
has its class enrolled at every size. Latency: the same query through FLAT, HNSW at the
tuned ``ef``, HNSW at the smallest ``ef`` of tune's ladder that reaches recall@1 0.99 on
the mated probes, and a 2,000-template FLAT gallery (the floor: what any search costs
through the gallery and Milvus), one after another in rotating order, query by query, so
the load of a shared box falls on all of them alike; ratios are medians of per-query
ratios. Recall also on the 500 non-mated probes (classes never enrolled).

    /work/main/.venv/bin/python docs/bench/milvus_auto_threshold.py \\
        --data /work/gb17/cache/emb-03c005503edb62df-c100000-t2-q1000-n500-s0 \\
        --out docs/bench/milvus_auto_threshold.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np

TARGET = 0.99


def _enroll(g, tpl: np.ndarray, ids: np.ndarray) -> float:
    """Enroll classes ``ids`` (``tpl`` is per x classes x dim); seconds taken."""
    t = time.perf_counter()
    for a in range(0, len(ids), 2000):
        block = np.ascontiguousarray(tpl[:, a:a + 2000].transpose(1, 0, 2))
        g.enroll_many((f"c{ids[a + j]}", block[j]) for j in range(len(block)))
    return time.perf_counter() - t


def _top1(g, q: np.ndarray) -> np.ndarray:
    return np.array([int(m[0].label[1:]) if m else -1 for m in g.search(q, k=1)])


def _fit_ef(g, q, truth, start: int) -> tuple[int, dict]:
    """The smallest ``ef`` of tune's ladder, from ``start``, whose recall@1 on ``q`` reaches
    TARGET (what the size costs at that recall); the gallery is left at ``start``."""
    from megaclass.gallery.milvus.tune import KNOBS

    tried: dict[int, float] = {}
    ef = start
    for ef in [v for v in KNOBS["HNSW"][1] if v >= start]:
        g.set_search_knobs(ef=ef)
        tried[ef] = float(np.mean(_top1(g, q) == truth))
        if tried[ef] >= TARGET:
            break
    g.set_search_knobs(ef=start)
    return ef, tried


def _latencies(systems: dict, q: np.ndarray) -> dict[str, np.ndarray]:
    """Per-query single-search ms of each system, query by query, in rotating order."""
    names = list(systems)
    out = {n: np.empty(len(q)) for n in names}
    for i in range(len(q)):
        for j in range(len(names)):
            name = names[(i + j) % len(names)]
            search = systems[name]
            t = time.perf_counter()
            search(q[i:i + 1], k=1)
            out[name][i] = (time.perf_counter() - t) * 1000
    return out


def _stats(ms: np.ndarray) -> dict:
    return {"p50_ms": round(float(np.percentile(ms, 50)), 3),
            "p99_ms": round(float(np.percentile(ms, 99)), 3), "mean_ms": round(float(ms.mean()), 3)}


def measure(data: Path, sizes: list[int], single: int, work: Path, log=print) -> dict:
    from megaclass.gallery.milvus import MilvusGallery
    from megaclass.gallery.milvus.standalone import MilvusProcess

    tpl_all = np.load(data / "templates.npy", mmap_mode="r")
    owner = np.load(data / "owner.npy")
    n_all = int(owner.max()) + 1
    per = len(owner) // n_all
    mated = np.load(data / "mated.npy").astype(np.float32)
    mated_cls = np.load(data / "mated_cls.npy")
    non_mated = np.load(data / "non_mated.npy").astype(np.float32)
    server = MilvusProcess(work / "milvus-server")
    log(f"server up in {server.start():.1f} s on port {server.port}")
    out: dict = {"data": str(data), "dim": int(tpl_all.shape[1]), "templates_per_class": per,
                 "mated_probes": len(mated), "non_mated_probes": len(non_mated),
                 "single_query_samples": single, "target_recall": TARGET, "sizes": {}}
    try:
        floor_ids = np.arange(1000)
        floor = MilvusGallery.open(f"{server.uri_base}/floor?timeout=600", dim=tpl_all.shape[1])
        _enroll(floor, np.stack([np.asarray(tpl_all[t * n_all + floor_ids]) for t in range(per)]), floor_ids)
        floor.tune(index="FLAT")
        for size in sizes:
            n = size // per
            want = np.unique(mated_cls)
            others = np.setdiff1d(np.arange(n_all), want)[: n - len(want)]
            ids = np.sort(np.concatenate([want, others]))
            tpl = np.stack([np.asarray(tpl_all[t * n_all + ids], np.float32) for t in range(per)])
            flat_tpl, cls = tpl.reshape(-1, tpl.shape[-1]), np.tile(ids, per)
            truth = cls[(mated @ flat_tpl.T).argmax(axis=1)]  # exact best class, enrolled templates
            truth_nm = cls[(non_mated @ flat_tpl.T).argmax(axis=1)]
            res: dict = {"templates": size, "classes": n}
            gs = {}
            for kind in ("FLAT", "HNSW"):
                g = MilvusGallery.open(f"{server.uri_base}/thr{kind}{size}?timeout=600", dim=tpl.shape[-1])
                key = kind.lower()
                res[f"{key}_enroll_s"] = round(_enroll(g, tpl, ids), 1)
                res[f"{key}_tune"] = g.tune(index=kind)  # flushes, builds, waits, fits ef
                gs[kind] = g
                log(f"{size}: {kind} enrolled in {res[f'{key}_enroll_s']} s, tune {res[f'{key}_tune']}")
            flat, hnsw = gs["FLAT"], gs["HNSW"]
            ef = res["hnsw_tune"]["search_params"]["ef"]
            ef_fit, tried = _fit_ef(hnsw, mated, truth, ef)
            res["recall_at_1"] = {"flat": float(np.mean(_top1(flat, mated) == truth)),
                                  "hnsw": float(np.mean(_top1(hnsw, mated) == truth)),
                                  "hnsw_fitted": tried[ef_fit]}
            res["recall_at_1_non_mated"] = {"flat": float(np.mean(_top1(flat, non_mated) == truth_nm)),
                                            "hnsw": float(np.mean(_top1(hnsw, non_mated) == truth_nm))}
            res["hnsw_ef"], res["hnsw_ef_fitted"], res["hnsw_recall_by_ef"] = ef, ef_fit, tried

            def hnsw_fitted(q, k, g=hnsw, ef=ef, ef_fit=ef_fit):
                g.set_search_knobs(ef=ef_fit)
                try:
                    return g.search(q, k=k)
                finally:
                    g.set_search_knobs(ef=ef)

            lat = _latencies({"flat": flat.search, "hnsw": hnsw.search, "hnsw_fitted": hnsw_fitted,
                              "floor": floor.search}, mated[:single])
            res["latency"] = {k: _stats(v) for k, v in lat.items()}
            res["median_ratio"] = {
                "flat_over_hnsw": round(float(np.median(lat["flat"] / lat["hnsw"])), 3),
                "flat_over_hnsw_fitted": round(float(np.median(lat["flat"] / lat["hnsw_fitted"])), 3),
                "flat_over_floor": round(float(np.median(lat["flat"] / lat["floor"])), 3),
                "hnsw_over_floor": round(float(np.median(lat["hnsw"] / lat["floor"])), 3)}
            res["load_avg"] = os.getloadavg()
            log(f"{size}: recall {res['recall_at_1']} ef {ef}/{ef_fit} latency {res['latency']} "
                f"ratios {res['median_ratio']}")
            out["sizes"][str(size)] = res
            for g in gs.values():
                for name in (g.name, g.meta_name):
                    g.link.client.drop_collection(name)
                g.close()
        floor.close()
    finally:
        server.stop()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--sizes", default="25000,50000,100000,200000")
    ap.add_argument("--single", type=int, default=600, help="single-query latency samples per system")
    ap.add_argument("--out", type=Path, required=True)
    a = ap.parse_args()
    t0 = time.time()
    with tempfile.TemporaryDirectory(prefix="milvus-thr-") as tmp:
        res = measure(a.data, [int(s) for s in a.sizes.split(",")], a.single, Path(tmp))
    res["host"] = {"cpus": os.cpu_count(), "load_avg_at_end": os.getloadavg(),
                   "python": platform.python_version(), "seconds": round(time.time() - t0)}
    a.out.write_text(json.dumps(res, indent=1) + "\n")
    print(json.dumps({s: {"p50_ms": {k: v["p50_ms"] for k, v in r["latency"].items()},
                          "median_ratio": r["median_ratio"], "recall_at_1": r["recall_at_1"],
                          "ef": [r["hnsw_ef"], r["hnsw_ef_fitted"]]} for s, r in res["sizes"].items()},
                     indent=1))


if __name__ == "__main__":
    main()
