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
  ``lancedb``: LanceDB's IVF_PQ (Chroma installs here too, but is HNSW again, as hnswlib);
- ``megaclass-milvus``: the Milvus gallery on a real Milvus server
  (:mod:`megaclass.bench.gallery_milvus`).

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
from .gallery_measure import (
    BenchData,
    Runner,
    dir_bytes,
    fit,
    forget_predictions,
    k_factors_from,
    last_predictions,
    progress,
    recall,
    row,
    speed,
    timed,
)
from .gallery_milvus import run_megaclass_milvus
from .gallery_peers import RUNNERS as PEER_RUNNERS

SYSTEMS = ("megaclass", "faiss", "numpy", "hnswlib", "usearch", "milvus", "lancedb", "megaclass-milvus")


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


def _rss_mb() -> float:
    """Peak resident set size of this process (MiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _current_rss_mb() -> float:
    """Anonymous resident memory (MiB): the process's own heap, not the mapped data file.
    Freed heap is handed back to the OS first (glibc keeps it otherwise: after an index
    rebuild that is gigabytes the system no longer holds)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: measure as is
        pass
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) / 1024
    raise OSError("no RssAnon in /proc/self/status")


def run_system(name: str, data_path: Path, work: Path, single: int) -> dict:
    """Run one system in this process; returns its measurements. The templates are
    memory-mapped (page cache, not this process's heap): RSS is the system's own."""
    tpl = np.load(data_path / "templates.npy", mmap_mode="r")
    owner, mated, truth = (np.load(data_path / f"{k}.npy") for k in ("owner", "mated", "truth"))
    runner = RUNNERS[name]
    base = _current_rss_mb()  # interpreter + imports + the small arrays: same for every system
    forget_predictions()
    out = runner(BenchData(tpl, owner, mated, truth, work, single))
    pred = last_predictions()
    if pred is not None:  # identification accuracy: the best class against the probe's true class
        true_cls = np.load(data_path / "mated_cls.npy")[: len(pred)]
        out["accuracy"] = float(np.mean(pred == true_cls))
        out["exact_accuracy"] = float(np.mean(truth[: len(pred)] == true_cls))
    out["peak_rss_mb"] = _rss_mb()
    out["rss_over_data_mb"] = out.pop("rss_after_mb", _current_rss_mb()) - base
    return out


def run_megaclass(d: BenchData) -> dict:
    """The Gallery with index ``$MEGACLASS_BENCH_INDEX`` (default ``auto``): durable
    batched enrolls, 200 single enrolls and erases, then its search knobs fitted from
    where its own tuning left them."""
    from megaclass.gallery import Gallery
    from megaclass.gallery.recall import RECALIBRATE_PAIRS

    path = d.work / "megaclass"
    n_cls = int(d.owner.max()) + 1
    per = len(d.tpl) // n_cls
    by_class = d.tpl.reshape(per, n_cls, -1)
    t = time.perf_counter()
    g = Gallery.open(path, dim=d.tpl.shape[1], index=os.environ.get("MEGACLASS_BENCH_INDEX", "auto"))
    g.show_progress = False
    step = 10_000
    for a in range(0, n_cls, step):  # one durable transaction per 10k classes
        block = np.ascontiguousarray(by_class[:, a:a + step].transpose(1, 0, 2))  # (classes, per, d)
        g.enroll_many((f"c{a + j}", block[j]) for j in range(len(block)))
        progress(min(a + step, n_cls) * per, n_cls * per, t)  # in templates, like the peers
    enroll_s = time.perf_counter() - t
    g.wait_for_index()  # background upgrade / re-fit of the index the enrolls called for
    ready_s = time.perf_counter() - t
    rebuilds = len(g.maintenance_log)
    single_t = time.perf_counter()
    for i in range(200):  # every call acknowledged only after its own durable commit
        g.enroll(f"extra{i}", d.tpl[i])
    single_s = time.perf_counter() - single_t
    for i in range(200):
        g.erase(f"extra{i}")
    g.wait_for_index()
    info = g.stats()

    def search_cls(q):
        return np.array([int(m[0].label[1:]) for m in g.search(q, k=1)])

    own = {**_own_tuning(info), "recall_at_own_knobs": float(np.mean(search_cls(d.mated) == d.truth))}
    knobs: dict = {}
    start = g.search_knobs()
    if start:
        name = start["knob"]

        def set_knobs(v, kf):
            g.set_search_knobs(**{name: v}, **({} if kf is None else {"k_factor": kf}))

        ks = k_factors_from(start.get("k_factor")) if name == "nprobe" else None
        knobs[name], _, got = fit(set_knobs, search_cls, d, start["value"], start["limit"], ks)
        if "k_factor" in start:
            knobs["k_factor"] = g.search_knobs()["k_factor"]
    else:
        got = recall(search_cls(d.mated), d.truth)
    speeds = speed(lambda q: g.search(q, k=1), lambda q: g.search(q, k=1), d.mated, d.single)
    serving_mb = _current_rss_mb()  # while open and serving, like the peers' (measured at their end)
    if own["calibrated_to"] == "prior" and len(d.mated) // 2 >= RECALIBRATE_PAIRS:
        own["after_observed"] = _after_observed(g, d, search_cls)
    g.close()
    open_s = timed(lambda: Gallery.open(path).close())
    (d.work / "megaclass.json").write_text(json.dumps({"index": info["index"], "knob": knobs}))
    return row(info["index"], knobs, got, len(d.tpl) / enroll_s, speeds, open_s, dir_bytes(path),
               True, **own, index_ready_s=ready_s, index_rebuilds=rebuilds,
               single_enroll_per_s=200 / single_s, rss_after_mb=serving_mb)


def _own_tuning(info: dict) -> dict:
    """What the gallery's ``stats()`` says its own tuning chose and claims (exact: 1.0)."""
    return {"recall_reported": info.get("recall_at_1", 1.0), "reported_ci95": info.get("recall_ci95"),
            "tuned_by": info.get("tuned_by", "exact"), "calibrated_to": info.get("calibrated_to"),
            "own_knobs": {k: info[k] for k in ("nprobe", "efSearch", "k_factor") if k in info}}


def _after_observed(g, d: BenchData, search_cls) -> dict:
    """What the live recall monitor does to a gallery tuned on the near-tie prior (one
    template per class): the first half of the mated queries is searched with every row
    sampled (what 1 % of ~50,000 live searches would give the monitor); their exact
    re-runs' (best score, gap) pairs replace the prior and the gallery re-tunes itself.
    Measured on the other half, at the knobs it chose."""
    half = len(d.mated) // 2
    watch = g._recall  # the gallery's monitor: sampled in one pass here instead of over hours
    rate, interval, batch = watch.rate, watch.interval, watch.batch
    g.monitor_recall(rate=1.0)
    watch.interval, watch.batch = 0.0, half
    t = time.perf_counter()
    g.search(d.mated[:half], k=1)
    watch.wait()  # for the exact pass and the re-tune it triggers
    retune_s = time.perf_counter() - t
    g.monitor_recall(rate=rate)  # back to the gallery's own monitor settings for the timing
    watch.interval, watch.batch = interval, batch
    tuning = _own_tuning(g.stats())  # what it re-tuned to, before the held-out searches
    held_out, truth = d.mated[half:], d.truth[half:]
    pred = search_cls(held_out)
    speeds = speed(lambda q: g.search(q, k=1), lambda q: g.search(q, k=1), held_out, d.single)
    return {**tuning, "recall_held_out": float(np.mean(pred == truth)),
            "held_out_queries": len(held_out), "retune_s": retune_s, **speeds}


def _faiss_spec(work: Path) -> tuple[str, dict]:
    """The index spec and search knob megaclass settled on (raw FAISS does the same work)."""
    meta = json.loads((work / "megaclass.json").read_text())
    return meta["index"], meta["knob"]


def run_faiss(d: BenchData) -> dict:
    """Raw FAISS with the spec and knobs megaclass settled on (the floor): same training
    sample size, ``IndexIDMap2``, one thread for single queries."""
    import faiss

    from megaclass.gallery.tuning import TARGET_RECALL

    spec, info = _faiss_spec(d.work)
    t = time.perf_counter()
    inner = faiss.IndexFlatIP(d.tpl.shape[1]) if spec == "Flat" else faiss.index_factory(
        d.tpl.shape[1], spec, faiss.METRIC_INNER_PRODUCT)
    if not inner.is_trained:
        rng = np.random.default_rng(0)
        inner.train(d.tpl[rng.choice(len(d.tpl), min(len(d.tpl), 200_000), replace=False)])
    index = faiss.IndexIDMap2(inner)
    index.add_with_ids(d.tpl, np.arange(len(d.tpl), dtype=np.int64))
    build_s = time.perf_counter() - t

    def set_knobs(v, kf):
        faiss.extract_index_ivf(index).nprobe = int(v)
        if kf is not None:  # "...,RFlat": as many candidates re-ranked exactly
            refine = faiss.downcast_index(inner)
            if not isinstance(refine, faiss.IndexRefine):
                raise TypeError(f"k_factor {kf} given for {spec!r}, which does not re-rank")
            refine.k_factor = float(kf)

    if "nprobe" in info:  # the same search knob megaclass settled on: same work per query
        set_knobs(info["nprobe"], info.get("k_factor"))
    if "efSearch" in info and isinstance(graph := faiss.downcast_index(inner), faiss.IndexHNSW):
        graph.hnsw.efSearch = int(info["efSearch"])
    path = d.work / "faiss.index"
    faiss.write_index(index, str(path))

    def search_cls(q):
        return d.owner[index.search(q, 1)[1][:, 0]]

    got = recall(search_cls(d.mated), d.truth)
    if got < TARGET_RECALL and "nprobe" in info:  # its own k-means partitions differ: equal recall first
        ivf = faiss.extract_index_ivf(index)
        info["nprobe"], kf, got = fit(set_knobs, search_cls, d, int(info["nprobe"]), ivf.nlist,
                                      k_factors_from(info.get("k_factor")))
        if kf is not None:
            info["k_factor"] = kf
    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)  # single queries: one thread is FAISS's fastest setting
    speeds = speed(lambda q: index.search(q, 1), lambda q: index.search(q, 1), d.mated, d.single,
                   between=lambda: faiss.omp_set_num_threads(threads))
    return row(spec, info, got, len(d.tpl) / build_s, speeds,
               timed(lambda: faiss.read_index(str(path))), path.stat().st_size, False)


RUNNERS: dict[str, Runner] = {"megaclass": run_megaclass, "faiss": run_faiss, **PEER_RUNNERS,
                              "megaclass-milvus": run_megaclass_milvus}
assert tuple(RUNNERS) == SYSTEMS


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
    limit = cfg.timeout if name in ("megaclass", "faiss", "numpy", "megaclass-milvus") \
        or cfg.peer_timeout is None \
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
        from megaclass.gallery.tuning import TARGET_RECALL

        report = {"config": dict(asdict(cfg), dim=dim), "target_recall": TARGET_RECALL,
                  "results": results}
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
    after = res.get("megaclass", {}).get("after_observed") or {}
    if "p50_ms" in after:  # the same gallery once its monitor re-tuned it (no enroll of its own)
        res = {"megaclass": res["megaclass"], "megaclass after\nobserving": after,
               **{k: v for k, v in res.items() if k != "megaclass"}}
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    names = list(res)
    for ax, key, label in ((axes[0], "p50_ms", "single-query p50 (ms)"),
                           (axes[1], "enroll_templates_per_s", "enroll / build (templates/s)")):
        values = [res[n].get(key) or 0.0 for n in names]
        bars = ax.bar(names, values)
        ax.bar_label(bars, labels=["" if not v else f"{v:,.0f}" if v >= 100 else f"{v:.3g}" for v in values],
                     fontsize=8)
        ax.set_ylabel(label)
        positive = [v for v in values if v > 0]
        if positive and max(positive) > 20 * min(positive):  # orders of magnitude apart
            ax.set_yscale("log")
        else:  # linear from zero: a log axis cut at the smallest bar makes 1.1x look like 10x
            ax.set_ylim(0, max(positive or [1.0]) * 1.15)
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
