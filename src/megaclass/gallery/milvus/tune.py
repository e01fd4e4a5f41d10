"""Index choice and search-knob fitting of a Milvus gallery: recall@1 >= 0.99 by class.

The truth is exact search by numpy over every template (streamed from Milvus); the probes
are the given queries, or templates of the gallery itself with Gaussian noise (a real
probe is never identical to a template). HNSW's ``ef`` / IVF's ``nprobe`` rise from a
small value until the best *class* Milvus returns agrees with the exact best class on
``target`` of the probes; the knob and the measured recall are stored as gallery records
and reported by :meth:`MilvusGallery.stats`.

Milvus indexes only sealed segments: rows since the last flush sit in a growing segment
that every search scans in full. Measured on the real server (2.3.5): 20,000 templates
enrolled and tuned without a flush had ``indexed_rows`` 0 (nothing sealed), so the "HNSW"
gallery was an exact scan. ``tune`` therefore flushes first and waits until Milvus has
built the index over every row before it fits the knob.
"""

from __future__ import annotations

import time

import numpy as np

from ...errors import InvalidInputError
from ..vectors import as_unit_vectors
from . import schema

KNOBS = {"HNSW": ("ef", (16, 32, 64, 128, 256, 512, 1024, 2048)),
         "IVF_FLAT": ("nprobe", (1, 2, 4, 8, 16, 32, 64, 128, 256, 512))}


INDEX_WAIT = 3600.0  # s: Milvus builds the index of flushed rows in the background


def _wait_indexed(g, rows: int, timeout: float) -> dict:
    """Wait until the index covers every flushed row, at least ``rows`` (``pending_index_rows``
    0, ``indexed_rows`` = ``total_rows`` >= ``rows``) or ``timeout`` s have passed; returns
    ``indexed_rows`` / ``total_rows`` as Milvus reports them ({} where it does not: Lite)."""
    t0 = time.monotonic()
    while True:
        d = g.link.call("describe the index", g.link.client.describe_index, g.name, "vector")
        done, total = d.get("indexed_rows"), d.get("total_rows")
        if done is None or total is None:
            return {}
        if (not d.get("pending_index_rows") and done >= total >= rows) or time.monotonic() - t0 > timeout:
            return {"indexed_rows": int(done), "total_rows": int(total)}
        time.sleep(0.5)


def _exact_best(g, q: np.ndarray) -> np.ndarray:
    """Exact best class label per query (numpy over streamed templates)."""
    best = np.full(len(q), -np.inf, np.float32)
    label = np.empty(len(q), dtype=object)
    for rows in g.link.scan(g.link.visible(), ["label", "vector"], batch=8192):
        v = np.asarray([r["vector"] for r in rows], np.float32)
        s = q @ v.T
        j = s.argmax(axis=1)
        top = s[np.arange(len(q)), j]
        better = top > best
        best[better] = top[better]
        label[better] = [rows[i]["label"] for i in j[better]]
    return label


def _probes(g, n: int, noise: float, seed: int) -> np.ndarray:
    rows = g.link.call("sample templates", g.link.client.query, g.name, filter=g.link.visible(),
                   output_fields=["vector"], limit=n, consistency_level=g.link.consistency)
    v = np.asarray([r["vector"] for r in rows], np.float32)
    rng = np.random.default_rng(seed)
    v = v + rng.normal(scale=noise / np.sqrt(g.dim), size=v.shape).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def tune(g, queries=None, *, index: str | None = None, target: float = 0.99, n: int = 500,
         noise: float = 0.5, seed: int = 0) -> dict:
    """(Re)build the index (``index``: FLAT / HNSW / IVF_FLAT / auto by size) and fit its
    search knob to recall@1 >= ``target``; returns what was chosen and measured."""
    g.check_writable()
    n_templates = g.num_templates
    if not n_templates:
        raise InvalidInputError("tune needs an enrolled gallery: this one is empty")
    want, build = schema.index_params(index or g.link.target.index, n_templates)
    t0 = time.monotonic()
    g.link.call("flush", g.link.client.flush, g.name, timeout=3600)  # seal: only sealed rows are indexed
    have = g.link.call("describe the index", g.link.client.describe_index, g.name, "vector")
    if have.get("index_type") != want:  # Milvus rebuilds only on a released collection
        g.link.call("release", g.link.client.release_collection, g.name)
        g.link.call("drop the index", g.link.client.drop_index, g.name, "vector")
        ip = g.link.client.prepare_index_params()
        ip.add_index(field_name="vector", index_type=want, metric_type="IP", params=build)
        g.link.call("build the index", g.link.client.create_index, g.name, ip, timeout=3600)
        g.link.call("load", g.link.client.load_collection, g.name, timeout=3600)
    indexed = _wait_indexed(g, n_templates, INDEX_WAIT)
    build_s = time.monotonic() - t0
    q = as_unit_vectors(queries, g.dim) if queries is not None else _probes(g, n, noise, seed)
    truth = _exact_best(g, q)
    knob, chosen, got = None, {}, 1.0
    if want in KNOBS:
        knob, values = KNOBS[want]
        for v in values:
            g.link.search_params = {knob: v}
            got = float(np.mean([m[0].label == t if m else False
                                 for m, t in zip(g.search(q, k=1), truth, strict=True)]))
            chosen = {knob: v}
            if got >= target:
                break
    else:
        g.link.search_params = {}
        got = float(np.mean([m[0].label == t if m else False
                             for m, t in zip(g.search(q, k=1), truth, strict=True)]))
    with g.link.lock:
        g.records.set_setting("milvus_search_params", chosen)
        g.records.set_setting("milvus_recall", {"recall_at_1": got, "queries": len(q), "index": want})
    return {"index": want, "build_params": build, "search_params": chosen, "recall_at_1": got,
            "recall_queries": len(q), "templates": n_templates, "build_s": round(build_s, 2),
            **indexed}
