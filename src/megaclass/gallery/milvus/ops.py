"""Milvus gallery operations beyond enroll/search: stats, check, compaction (making an
erasure final), class iteration, and the backend-neutral export/import format."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from ...errors import ConfigError
from ..maintenance import EXPORT_FORMAT, EXPORT_VERSION, read_export


def stats(g) -> dict:
    """Counts, the index Milvus answers with, its search params and measured recall."""
    idx = g.link.call("describe the index", g.link.client.describe_index, g.name, "vector")
    params = {k: v for k, v in idx.items() if k in ("M", "efConstruction", "nlist")}
    file = Path(g.link.target.uri)
    disk = file.stat().st_size if g.link.target.lite and file.exists() else None
    return {"uri": g.uri, "classes": len(g), "templates": g.num_templates, "dim": g.dim,
            "index": f"milvus:{idx.get('index_type')}", "index_params": params,
            "search_params": dict(g.link.search_params),
            "recall_at_1": g.records.setting("milvus_recall", {}).get("recall_at_1",
                                                                      1.0 if idx.get("index_type") == "FLAT"
                                                                      else None),
            "consistency": g.link.consistency, "server_version": g.server_version,
            "encrypted": False, "disk_bytes": disk, "open_writes": len(g.records.open_writes())}


def check(g) -> dict:
    """Integrity report (nothing modified): each class has one head row, templates are unit
    rows of the gallery's dim, no write is left open past its lease."""
    problems: list[str] = []
    writes = g.records.open_writes()
    stale = [w for w, e in writes.items() if e["commit"] is not None or e["expires"] < time.time()]
    if stale:
        problems.append(f"{len(stale)} write(s) left open by a crash: run recover() (hidden meanwhile)")
    heads: dict[str, int] = {}
    n, bad = 0, 0
    for rows in g.link.scan(g.link.visible(), ["label", "head", "vector"]):
        n += len(rows)
        v = np.asarray([r["vector"] for r in rows], np.float32)
        bad += int(np.sum(np.abs(np.linalg.norm(v, axis=1) - 1) > 1e-3))
        for r in rows:
            heads.setdefault(r["label"], 0)
            heads[r["label"]] += bool(r["head"])
    if bad:
        problems.append(f"{bad} templates are not unit vectors")
    odd = [lb for lb, h in heads.items() if h != 1]
    if odd:
        problems.append(f"{len(odd)} classes without exactly one head row (e.g. {odd[0]!r})")
    return {"ok": not problems, "problems": problems, "classes": len(heads), "templates": n,
            "encrypted": False, "open_writes": len(writes)}


def compact(g, timeout: float = 300.0) -> dict:
    """Make deletions final in Milvus: flush, run a compaction and wait for it, then verify
    that no erased row is left (deleted rows leave the segments the compaction rewrote;
    the old segment files go at Milvus's garbage collection, ``dataCoord.gc.*``)."""
    g.check_writable()
    g.link.call("flush", g.link.client.flush, g.name)
    job = g.link.call("compact", g.link.client.compact, g.name)
    start, state = time.monotonic(), None
    while time.monotonic() - start < timeout:
        state = g.link.call("read compaction state", g.link.client.get_compaction_state, job)
        if state == "Completed":
            break
        time.sleep(0.2)
    stats = g.link.call("read collection stats", g.link.client.get_collection_stats, g.name)
    live = g.num_templates
    return {"compaction": state, "job": job, "seconds": round(time.monotonic() - start, 2),
            "rows_in_segments": int(stats.get("row_count", -1)), "live_templates": live}


def iter_classes(g, batch: int = 1000):
    """Yield lists of ``(label, templates, meta)`` in enrollment order, ``batch`` classes
    at a time (one scan of the collection, for export and migration)."""
    from .records import lits

    labels = g.labels()
    for i in range(0, len(labels), batch):
        chunk = labels[i:i + batch]
        rows: dict[str, list] = {lb: [] for lb in chunk}
        meta: dict[str, dict] = {}
        for part in g.link.scan(g.link.visible(f"label in {lits(chunk)}"),
                          ["label", "vector", "meta", "w", "seq"]):
            for r in part:
                rows[r["label"]].append((r["w"], r["seq"], r["vector"]))
                meta[r["label"]] = r["meta"] or {}
        yield [(lb, np.asarray([v for *_, v in sorted(rows[lb], key=lambda t: t[:2])], np.float32),
                meta.get(lb, {})) for lb in chunk if rows[lb]]


def export(g, out) -> Path:
    """The backend-neutral export (manifest.json + templates.npy + template_class.npy)."""
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise ConfigError(f"export folder {out} is not empty")
    out.mkdir(parents=True, exist_ok=True)
    classes: list[dict[str, Any]] = []
    vecs: list[np.ndarray] = []
    owner: list[np.ndarray] = []
    for part in iter_classes(g):
        for label, tmpl, meta in part:
            owner.append(np.full(len(tmpl), len(classes), np.int64))
            classes.append({"label": label, "meta": meta})
            vecs.append(tmpl)
    vectors = np.concatenate(vecs) if vecs else np.empty((0, g.dim), np.float32)
    np.save(out / "templates.npy", vectors, allow_pickle=False)
    np.save(out / "template_class.npy", np.concatenate(owner) if owner else np.empty(0, np.int64),
            allow_pickle=False)
    settings = g.settings()
    (out / "manifest.json").write_text(json.dumps(
        {"format": EXPORT_FORMAT, "version": EXPORT_VERSION, "dim": g.dim, "classes": classes,
         "templates": len(vectors), "settings": settings}, indent=1))
    return out


def import_into(cls, src, uri, *, key=None):
    """A new Milvus gallery at ``uri`` holding an export, in one journaled write."""
    manifest, items = read_export(src)
    g = cls.open(str(uri), dim=int(manifest["dim"]), key=key)
    try:
        if len(g):
            raise ConfigError(f"{g.uri} already holds classes: import needs a new gallery")
        for k, v in manifest.get("settings", {}).items():
            g.set_setting(k, v)
        g.enroll_many(items)
    except BaseException:
        g.close()
        raise
    return g
