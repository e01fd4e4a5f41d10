"""Gallery operations beyond enroll/search: compaction, integrity check, export/import.

- :func:`compact` makes erasure final on disk: SQLite ``VACUUM`` plus a truncated WAL
  (with ``secure_delete`` on, deleted rows are zeroed as well) and a rewritten index
  snapshot, so an erased class's vector bytes no longer appear in any gallery file.
- :func:`check` verifies that the store is intact, every template decodes (and
  decrypts) to a unit vector, and the index holds exactly the store's templates.
- :func:`tune` re-fits the approximate index's search knobs to a sample of real probes.
- :func:`export_gallery` / :func:`import_gallery` move a gallery as ``manifest.json`` +
  ``templates.npy`` + ``template_class.npy`` (``allow_pickle=False``): portable, no
  pickle. An export holds templates **in clear**, whatever the source's encryption.

Example
-------
>>> from megaclass.gallery import Gallery                         # doctest: +SKIP
>>> g = Gallery.open("faces"); g.erase("alice"); g.compact()    # doctest: +SKIP
>>> g.check()["ok"]                                              # doctest: +SKIP
True
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..errors import ConfigError, InvalidInputError
from .snapshot import INDEX_META, INDEX_NAME

if TYPE_CHECKING:  # pragma: no cover
    from .gallery import Gallery

TUNE_MIN_QUERIES = 100  # fewer cannot resolve recall 0.99 (one miss is 1 %)
TUNE_MAX_QUERIES = 100_000
EXPORT_FORMAT = "megaclass-gallery-export"
EXPORT_VERSION = 1


def compact(gallery: Gallery, *, full: bool = True) -> None:
    """Make erasures final on disk: the erased templates' bytes leave every gallery file.

    SQLite zeroes deleted rows in place (``secure_delete``); what is left are older page
    images in the WAL, removed by a truncating checkpoint, and the erased vectors inside
    the index (and its snapshot). ``full``: tombstoned vectors are purged from the index
    (rebuilt if its type cannot drop them), ``VACUUM`` shrinks the file and the snapshot
    is rewritten. The light form (automatic compaction, whose cost must not grow with
    the gallery) purges only where that is one pass over the ids, else overwrites the
    erased exact re-rank vectors in memory with zeros (4-bit codes, a lossy trace of D/16 bytes or more,
    stay until the next re-fit or full compaction; an HNSW graph keeps erased vectors
    until its rebuild), and deletes the stale snapshot; the next :meth:`save` or
    :meth:`close` writes a fresh one.
    """
    st = gallery.state
    with st.session() as store:
        with st.search_lock.write():
            purged = st.index.purge(cheap_only=not full)
        if not purged and full:  # erased vectors still inside FAISS: they must leave the snapshot
            gallery.rebuild_index()
        if full:
            store.compact()
        else:
            store.truncate_wal()
        for stale in gallery.path.glob("*.tmp"):
            stale.unlink(missing_ok=True)
        if full:
            gallery.save()
        else:
            for name in (INDEX_NAME, INDEX_META):
                (gallery.path / name).unlink(missing_ok=True)
            st.snapshot_stale()


def tune(gallery: Gallery, queries, retune: Callable[[str], dict]) -> dict:
    """Re-fit the search knobs to ``queries``, a sample of real probe vectors (None: the
    gallery's own best probes, see :mod:`megaclass.gallery.probes`).

    The best class of every query by exact search over the store is the truth; nprobe /
    efSearch (and the re-ranked candidates of ``...,RFlat``) are set to the smallest
    values whose best class agrees on >= 99.5 % of the queries (``retune(why)``: the
    recall monitor's re-tune on the gallery's own probes, for ``queries=None``). Searches go on with the old
    knobs while it runs; the new ones are saved with the snapshot and kept until the index
    is next re-fitted (when the gallery doubles) or the live monitor re-tunes it. The
    queries are not stored. Returns ``{"index", "nprobe"/"efSearch", "k_factor",
    "recall_at_1", "recall_ci95", "recall_queries", "tuned_by", ...}``.
    """
    from .probes import real
    from .vectors import as_unit_vectors

    st = gallery.state
    if queries is None:  # the best probes the gallery has: kept queries, leave-one-out, calibrated
        gallery.wait_for_index()
        with st.session():
            if st.index.exact:
                return dict(st.index.describe(), recall_at_1=1.0, tuned_by="exact")
            retune("asked for (Gallery.tune)")
            return st.index.describe()
    q = as_unit_vectors(queries, gallery.dim)
    if not TUNE_MIN_QUERIES <= len(q) <= TUNE_MAX_QUERIES:
        raise InvalidInputError(f"tune needs {TUNE_MIN_QUERIES:,} to {TUNE_MAX_QUERIES:,} query vectors "
                                f"(fewer cannot measure recall 0.99: one miss is 1 %), got {len(q):,}")
    gallery.wait_for_index()
    with st.session() as store:
        index = st.index
        if index.exact:
            return dict(index.describe(), recall_at_1=1.0, recall_queries=len(q), tuned_by="exact")
        if not index.ntotal:
            raise InvalidInputError("tune needs an enrolled gallery: this one is empty")
        tids, cids = store.template_classes()
        probes = real(q, tids, cids, store.iter_templates, "queries")
        out = index.tune_on(probes, lock=st.search_lock.write())  # searches go on until the knobs change
        st.snapshot_stale()  # the snapshot carries the knobs: rewrite it on close
        return out


def check(gallery: Gallery) -> dict:
    """Integrity report: ``{"ok": bool, "problems": [...], ...}`` (nothing is modified)."""
    problems: list[str] = []
    with gallery.state.session() as store:
        problems += store.integrity_problems()
        n_templates, bad_norm = 0, 0
        ids_seen = []
        try:
            for tids, vecs in store.iter_templates():
                n_templates += len(tids)
                ids_seen.append(tids)
                bad_norm += int(np.sum(np.abs(np.linalg.norm(vecs, axis=1) - 1) > 1e-3))
        except Exception as exc:  # damaged or undecryptable rows
            problems.append(f"templates cannot be read: {exc}")
        if bad_norm:
            problems.append(f"{bad_norm} templates are not unit vectors")
        store_ids = np.sort(np.concatenate(ids_seen)) if ids_seen else np.empty(0, np.int64)
        index_ids = np.sort(gallery.state.index.live_template_ids())
        if not np.array_equal(store_ids, index_ids):
            problems.append(f"index holds {len(index_ids)} templates, store {len(store_ids)} "
                            "(or different ids)")
        snapshot = "missing"
        meta_path = gallery.path / INDEX_META
        if meta_path.exists():
            try:
                seq = json.loads(meta_path.read_text()).get("seq")
                snapshot = "current" if seq == store.last_seq() else "stale (rebuilt on open)"
            except (OSError, ValueError):
                snapshot = "damaged (rebuilt on open)"
        classes = store.class_count()
        encrypted = store.cipher is not None
    return {"ok": not problems, "problems": problems, "classes": classes,
            "templates": n_templates, "encrypted": encrypted, "snapshot": snapshot}


def export_gallery(gallery: Gallery, out: str | os.PathLike) -> Path:
    """Write ``manifest.json``, ``templates.npy``, ``template_class.npy`` into ``out``."""
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise ConfigError(f"export folder {out} is not empty")
    out.mkdir(parents=True, exist_ok=True)
    with gallery.state.session() as store:
        records = store.class_records()
        position = {cid: k for k, (cid, _, _) in enumerate(records)}
        tids, cids = store.template_classes()
        vectors = np.empty((len(tids), gallery.dim), np.float32)
        at = 0
        for ids, vecs in store.iter_templates():
            vectors[at: at + len(ids)] = vecs
            at += len(ids)
        settings = store.settings()
    owner = np.asarray([position[c] for c in cids.tolist()], dtype=np.int64)
    np.save(out / "templates.npy", vectors, allow_pickle=False)
    np.save(out / "template_class.npy", owner, allow_pickle=False)
    manifest = {"format": EXPORT_FORMAT, "version": EXPORT_VERSION, "dim": gallery.dim,
                "classes": [{"label": label, "meta": meta} for _, label, meta in records],
                "templates": len(vectors), "settings": settings}
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1))
    return out


def read_export(src: str | os.PathLike) -> tuple[dict, list[tuple]]:
    """An export's manifest and its ``(label, templates, meta)`` items, checked (any backend)."""
    src = Path(src)
    try:
        manifest = json.loads((src / "manifest.json").read_text())
        vectors = np.load(src / "templates.npy", allow_pickle=False)
        owner = np.load(src / "template_class.npy", allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise InvalidInputError(f"{src} is not a readable gallery export: {exc}") from exc
    if manifest.get("format") != EXPORT_FORMAT or manifest.get("version") != EXPORT_VERSION:
        raise InvalidInputError(f"{src}: not a megaclass gallery export (version 1)")
    classes = manifest["classes"]
    if len(owner) != len(vectors) or (len(owner) and (owner.min() < 0 or owner.max() >= len(classes))):
        raise InvalidInputError(f"{src}: templates and classes do not match")
    order = np.argsort(owner, kind="stable")
    bounds = np.searchsorted(owner[order], np.arange(len(classes) + 1))
    items = [(c["label"], vectors[order[bounds[k]: bounds[k + 1]]], c.get("meta") or None)
             for k, c in enumerate(classes)]
    return manifest, items


def import_gallery(src: str | os.PathLike, path: str | os.PathLike, *, key=None) -> Gallery:
    """Create a new gallery at ``path`` from an export (one transaction: all or nothing)."""
    from .gallery import Gallery

    manifest, items = read_export(src)
    gallery = Gallery.open(path, dim=int(manifest["dim"]), key=key)
    try:
        if len(gallery):
            raise ConfigError(f"{path} already holds a gallery with classes: import needs a new one")
        gallery.enroll_many(items)
        for k, v in manifest.get("settings", {}).items():
            gallery.set_setting(k, v)
    except BaseException:
        gallery.close()
        raise
    return gallery
