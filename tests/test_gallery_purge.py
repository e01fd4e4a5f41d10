"""Erased templates leave an IVF index for real (no re-training), layer by layer."""

import faiss
import numpy as np
import pytest

from megaclass.gallery import Gallery
from megaclass.gallery.purge import remove_positions

DIM = 16


def _unit(n, seed=0):
    x = np.random.default_rng(seed).standard_normal((n, DIM)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _filled(spec, x, ids):
    base = faiss.index_factory(DIM, spec, faiss.METRIC_INNER_PRODUCT)
    base.train(x)
    index = faiss.IndexIDMap2(faiss.clone_index(base))
    index.add_with_ids(x, ids)
    return base, index


def _probe_all(index):
    faiss.extract_index_ivf(index).nprobe = faiss.extract_index_ivf(index).nlist
    inner = faiss.downcast_index(index.index)
    if isinstance(inner, faiss.IndexRefine):
        inner.k_factor = 8


def test_faiss_own_removal_from_an_id_mapped_ivf_index_returns_wrong_ids():
    """Why purge.py exists: IndexIDMap2 over IVF renumbers its map, the lists do not."""
    x = _unit(3000)
    _, index = _filled("IVF8,Flat", x, np.arange(3000) + 10_000)
    _probe_all(index)
    index.remove_ids(np.arange(100) + 10_000)
    found = index.search(x[[500, 2500]], 1)[1].ravel()
    assert list(found) != [10_500, 12_500]


SPECS = ["IVF8,Flat", "IVF8,SQ8", "IVF8,PQ4", "IVF8,PQ8x4fs,RFlat", "IVF8,SQ8,RFlat", "Flat"]


@pytest.mark.parametrize("spec", SPECS)
def test_removed_positions_leave_an_index_equal_to_one_built_without_them(spec):
    x = _unit(3000)
    ids = np.arange(3000) + 10_000
    base, index = _filled(spec, x, ids)
    rng = np.random.default_rng(1)
    picked = rng.choice(3000, 200, replace=False)
    gone = np.unique(np.r_[np.arange(50), np.arange(1500, 1530), [2999], picked])
    assert remove_positions(index, gone)
    keep = np.delete(ids, gone)
    fresh = faiss.IndexIDMap2(faiss.clone_index(base))
    fresh.add_with_ids(x[keep - 10_000], keep)
    extra = _unit(20, seed=2)  # later adds land after the renumbered ones
    index.add_with_ids(extra, np.arange(20) + 50_000)
    fresh.add_with_ids(extra, np.arange(20) + 50_000)
    assert index.ntotal == fresh.ntotal == 3000 - len(gone) + 20
    if spec != "Flat":
        _probe_all(index)
        _probe_all(fresh)
    queries = np.vstack([x[keep - 10_000], extra])  # (4-bit codes of erased ones tie differently)
    d1, i1 = index.search(queries, 5)
    d2, i2 = fresh.search(queries, 5)
    assert not np.isin(i1, ids[gone]).any()
    own = np.r_[keep, np.arange(20) + 50_000]
    assert np.mean(i1[:, 0] == own) == np.mean(i2[:, 0] == own) > 0.95  # every vector finds itself
    if "x4fs" in spec:  # refilled lists: 4-bit scores tie a lot, the re-ranked candidates may differ
        assert np.mean(np.isclose(d1, d2, atol=1e-5)) > 0.98
    else:
        np.testing.assert_allclose(d1, d2, atol=1e-5)
        np.testing.assert_array_equal(i1, i2)


def test_faiss_fast_scan_lists_lose_vectors_added_after_a_removal():
    """Why fast-scan lists are refilled rather than edited: FAISS 1.15 loses later adds."""
    x = _unit(3000)
    ivf = faiss.index_factory(DIM, "IVF8,PQ8x4fs", faiss.METRIC_INNER_PRODUCT)
    ivf.train(x)
    ivf.add_with_ids(x, np.arange(3000))
    ivf.remove_ids(faiss.IDSelectorBatch(np.arange(0, 3000, 7)))
    extra = _unit(20, seed=2)
    ivf.add_with_ids(extra, np.arange(20) + 50_000)
    ivf.nprobe = 8
    assert np.mean(ivf.search(extra, 1)[1].ravel() >= 50_000) < 0.5  # if this fails, FAISS fixed it


def test_fast_scan_without_exact_vectors_is_left_to_a_rebuild():
    x = _unit(3000)
    _, index = _filled("IVF8,PQ8x4fs", x, np.arange(3000))
    assert remove_positions(index, np.array([3, 7])) is False
    assert index.ntotal == 3000


def test_graph_indexes_cannot_drop_vectors():
    x = _unit(500)
    _, index = _filled("HNSW8", x, np.arange(500))
    assert remove_positions(index, np.array([3, 7])) is False
    assert index.ntotal == 500


@pytest.mark.parametrize("spec", ["IVF16,PQ4x4fs,RFlat", "HNSW16"])
def test_gallery_erase_then_compact_purges_or_rebuilds(tmp_path, spec):
    rng = np.random.default_rng(0)
    centres = _unit(300, seed=3)
    with Gallery.open(tmp_path / "g", dim=DIM, index=spec) as g:
        g.enroll_many((f"c{i}", centres[i] + rng.normal(scale=0.05, size=(3, DIM))) for i in range(300))
        assert g.wait_for_index(timeout=120)
        assert g.stats()["index"] == spec
        builds = len(g.maintenance_log)
        for i in range(10):
            g.erase(f"c{i}")
        assert g.stats()["tombstones"] == 30
        g.compact()
        st = g.stats()
        assert st["tombstones"] == 0 and st["templates"] == 870 == g.state.index.index.ntotal
        # IVF: purged in place, no new build; HNSW: rebuilt
        assert len(g.maintenance_log) == builds + (spec.startswith("HNSW"))
        hits = [m[0].label for m in g.search(centres[:50], k=1)]
        assert all(h != f"c{i}" for i, h in enumerate(hits[:10]))
        assert np.mean([h == f"c{i}" for i, h in enumerate(hits) if i >= 10]) >= 0.95
        assert g.check()["ok"]
    with Gallery.open(tmp_path / "g") as g:
        assert len(g) == 290 and g.search(centres[20], k=1)[0][0].label == "c20"


def _files_contain(directory, needle: bytes) -> list[str]:
    return [p.name for p in directory.iterdir() if p.is_file() and needle in p.read_bytes()]


def test_automatic_compaction_scrubs_exact_vectors_without_a_rebuild(tmp_path, monkeypatch):
    """Light compaction on 4-bit lists: exact bytes zeroed in place, snapshot dropped."""
    monkeypatch.setattr(Gallery, "auto_compact_after", 3)
    rng = np.random.default_rng(0)
    centres = _unit(300, seed=3)
    path = tmp_path / "g"
    with Gallery.open(path, dim=DIM, index="IVF16,PQ4x4fs,RFlat") as g:
        g.enroll_many((f"c{i}", centres[i] + rng.normal(scale=0.05, size=(3, DIM))) for i in range(300))
        assert g.wait_for_index(timeout=120)
        g.save()
        needles = [row.tobytes()[:32] for row in g.templates("c1")]
        assert any(_files_contain(path, n) for n in needles)  # the check can fail
        builds = len(g.maintenance_log)
        for label in ("c0", "c1", "c2"):
            g.erase(label)
        assert len(g.maintenance_log) == builds  # no rebuild
        assert g.stats()["tombstones"] == 9  # codes stay until a re-fit or a full compaction
        assert not any(_files_contain(path, n) for n in needles)
        assert g.search(centres[5], k=1)[0][0].label == "c5"
    assert not any(_files_contain(path, n) for n in needles)  # nor in the snapshot close wrote
    with Gallery.open(path) as g:
        assert len(g) == 297 and g.search(centres[1], k=1)[0][0].label != "c1"
