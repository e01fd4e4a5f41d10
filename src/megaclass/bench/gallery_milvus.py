"""``megaclass-milvus`` in ``megaclass bench gallery``: the Milvus gallery on a real Milvus
server (the ``milvus`` package's standalone binary, started in the work folder; or the
server at ``$MEGACLASS_BENCH_MILVUS_URI``, e.g. ``milvus://root:Milvus@host:19530``).

The runner has the shape of :mod:`megaclass.bench.gallery_measure`: it enrolls every class
(batches of 2,000 classes, each write journaled and acknowledged by Milvus's write-ahead
log), times 50 single enrolls and erases (``$MEGACLASS_BENCH_MILVUS_SINGLE``), lets the
gallery pick and tune its index as a user would (``tune()``: FLAT below 50k templates,
else HNSW with ``ef`` fitted on its own
probes, reported as ``recall_reported``), then fits ``ef`` on the mated probes like every
other system and measures there. ``$MEGACLASS_BENCH_MILVUS_INDEX`` forces the index
(``FLAT``, ``HNSW``, ``IVF_FLAT``). ``$MEGACLASS_BENCH_MILVUS_TIMEOUT`` (seconds, default
600) bounds each call, the index build included (HNSW over 2M templates takes about that
long on 2 cores); the started server's session TTL is Milvus's default 30 s, not the
tests' 5 s (at 1M on a loaded box the server went "Abnormal" during the index build; a
missed 5 s keep-alive is the suspected cause).
The server runs in its own process: ``rss_over_data_mb``
is the client's, ``server_rss_mb`` the server's (VmHWM), ``disk_mb`` its data folder.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np

from .gallery_measure import BenchData, dir_bytes, fit, progress, recall, row, speed, timed

BATCH_CLASSES = 2000


def _vm_hwm_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def run_megaclass_milvus(d: BenchData) -> dict:
    """Enroll, tune as a user would, fit to recall@1 0.99 on the mated probes, time."""
    from megaclass.gallery.milvus import MilvusGallery

    uri, server = os.environ.get("MEGACLASS_BENCH_MILVUS_URI"), None
    if not uri:
        from megaclass.gallery.milvus.standalone import MilvusProcess

        server = MilvusProcess(d.work / "milvus-server")
        server.start()
        uri = server.uri_base
    uri = f"{uri.rstrip('/')}/bench{int(time.time())}"
    try:
        n_cls = int(d.owner.max()) + 1
        per = len(d.tpl) // n_cls
        by_class = d.tpl.reshape(per, n_cls, -1)
        timeout = float(os.environ.get("MEGACLASS_BENCH_MILVUS_TIMEOUT", "600"))
        g = MilvusGallery.open(f"{uri}?timeout={timeout:g}", dim=d.tpl.shape[1])
        t = time.perf_counter()
        for a in range(0, n_cls, BATCH_CLASSES):
            block = np.ascontiguousarray(by_class[:, a:a + BATCH_CLASSES].transpose(1, 0, 2))
            g.enroll_many((f"c{a + j}", block[j]) for j in range(len(block)))
            progress(min(a + BATCH_CLASSES, n_cls) * per, n_cls * per, t)  # in templates
        enroll_s = time.perf_counter() - t
        single = int(os.environ.get("MEGACLASS_BENCH_MILVUS_SINGLE", "50"))  # enrolls + erases timed
        t = time.perf_counter()
        for i in range(single):
            g.enroll(f"extra{i}", d.tpl[i])
        single_s = time.perf_counter() - t
        for i in range(single):
            g.erase(f"extra{i}")
        tuned = g.tune(index=os.environ.get("MEGACLASS_BENCH_MILVUS_INDEX") or None)

        def search_cls(q):
            return np.array([int(m[0].label[1:]) for m in g.search(q, k=1)])

        own = {"recall_reported": tuned["recall_at_1"], "tuned_by": "synthetic",
               "own_knobs": tuned["search_params"],
               "recall_at_own_knobs": recall(search_cls(d.mated), d.truth)}
        knobs, start = {}, g.search_knobs()
        if start:
            name = start["knob"]
            knobs[name], _, got = fit(lambda v, kf: g.set_search_knobs(**{name: v}), search_cls, d,
                                      start["value"], start["limit"])
        else:
            got = recall(search_cls(d.mated), d.truth)
        speeds = speed(lambda q: g.search(q, k=1), lambda q: g.search(q, k=1), d.mated, d.single)
        g.close()
        open_s = timed(lambda: MilvusGallery.open(uri).close())
        if server is None:  # a server of the user's: leave it as it was
            with MilvusGallery.open(uri) as g:
                for name in (g.name, g.meta_name):
                    g.link.client.drop_collection(name)
        proc = server.proc if server is not None else None  # set while the server runs
        extra = {"server_rss_mb": _vm_hwm_mb(proc.pid)} if proc is not None else {}
        disk = dir_bytes(server.base) if server is not None else 0
        return row(f"milvus:{tuned['index']}", knobs, got, len(d.tpl) / enroll_s, speeds, open_s,
                   disk, True, **own, index_build_s=tuned["build_s"],
                   single_enroll_per_s=single / single_s, **extra)
    finally:
        if server is not None:
            server.stop()
