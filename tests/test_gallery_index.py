"""Index choice by factory string or "auto", tombstones, snapshot replay."""

import threading
import time

import numpy as np
import pytest

from megaclass.errors import ConfigError
from megaclass.gallery import Gallery
from megaclass.gallery import index_spec as index_mod  # the "auto" policy and its constants
from megaclass.gallery.index import ClassIndex
from megaclass.gallery.index_spec import check_spec, resolve_spec

DIM = 16


def _clustered(n_classes: int, per: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n_classes, DIM))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    vecs = centres[:, None, :] + rng.normal(scale=0.15, size=(n_classes, per, DIM))
    return centres, vecs.astype(np.float32)


def _fill(g, n_classes=400, per=3, seed=0):
    centres, vecs = _clustered(n_classes, per, seed)
    g.enroll_many((f"c{i}", vecs[i]) for i in range(n_classes))
    assert g.wait_for_index(timeout=120)  # the upgrade / re-tune a write calls for runs in the background
    return centres


def test_resolve_spec_grammar():
    assert resolve_spec("auto", 1000) == "Flat"
    assert resolve_spec("auto", 2_000_000, 256) == "IVF1024,PQ32x4fs,RFlat"  # one 4-bit code per 8 dims
    assert resolve_spec("auto", 1_000_000, 512) == "IVF1024,PQ64x4fs,RFlat"
    assert resolve_spec("auto", 4_000_000, 256) == "IVF2048,PQ64x4fs,RFlat"  # per 4 dims past 2M
    assert resolve_spec("auto", 1_000_000, 128) == "IVF1024,PQ32x4fs,RFlat"  # at least 32 codes
    assert resolve_spec("auto", 1_000_000, 200) == "IVF1024,PQ40x4fs,RFlat"  # a divisor of D
    assert resolve_spec("auto", 10_000_000, 128) == "IVF4096,PQ32x4fs,RFlat"
    assert resolve_spec("auto", 1_000_000, 100) == "IVF1024,Flat"  # no 4-bit PQ split of D=100
    assert resolve_spec("IVF1024,SQ8", 5) == "IVF1024,SQ8"
    with pytest.raises(ConfigError, match="unsupported index spec"):
        resolve_spec("IVF,Bogus", 10)
    with pytest.raises(ConfigError):
        Gallery.open("/tmp/never-created-gallery", dim=4, index="nonsense")


@pytest.mark.parametrize("spec", ["IVF64,SQ8,RFlat", "IVF64,PQ8x4fs,RFlat", "OPQ8,IVF64,PQ8", "HNSW32,SQ8",
                                  "IVF64,SQfp16", "PCA8,IVF64,Flat"])
def test_specs_are_faiss_factory_strings(spec, tmp_path):
    """FAISS's index_factory is the grammar: what it builds is accepted (the old regex
    refused IVF64,SQ8,RFlat although a test used that index)."""
    assert check_spec(spec, DIM) == spec
    Gallery.open(tmp_path / "g", dim=DIM, index=spec).close()


@pytest.mark.parametrize("spec, why", [("IVF,Bogus", "could not parse"), ("IVF64,PQ7", "multiple"),
                                        ("IDMap,Flat", "IndexIDMap2"), ("LSH", "METRIC_L2")])
def test_bad_specs_say_why(spec, why, tmp_path):
    with pytest.raises(ConfigError, match=why):
        check_spec(spec, DIM)
    with pytest.raises(ConfigError, match=why):
        Gallery.open(tmp_path / "g", dim=DIM, index=spec)
    assert not (tmp_path / "g").exists()  # refused before anything was written


def test_spec_checked_against_an_existing_gallerys_dim(tmp_path):
    Gallery.open(tmp_path / "g", dim=DIM).close()
    with pytest.raises(ConfigError, match="multiple"):
        Gallery.open(tmp_path / "g", index="IVF64,PQ5")  # 16 is no multiple of 5
    with Gallery.open(tmp_path / "g") as g:
        assert g.stats()["index_requested"] == "auto"  # unchanged


@pytest.mark.parametrize("spec", ["IVF16,Flat", "HNSW16", "IVF16,SQ8", "IVF16,PQ4x4fs,RFlat"])
def test_approximate_indexes_find_the_right_class(tmp_path, spec):
    with Gallery.open(tmp_path / "g", dim=DIM, index=spec) as g:
        centres = _fill(g)
        st = g.stats()
        assert st["index"] == spec and st["index_requested"] == spec
        assert st["recall_at_1"] >= 0.9
        hits = [m[0].label for m in g.search(centres[:100], k=1)]
        assert np.mean([h == f"c{i}" for i, h in enumerate(hits)]) >= 0.97


def test_too_few_templates_to_train_falls_back_to_exact(tmp_path):
    with Gallery.open(tmp_path / "g", dim=DIM, index="IVF1024,Flat") as g:
        _fill(g, n_classes=20)
        st = g.stats()
        assert st["index"] == "Flat" and "needs >=" in st["fallback"]


def test_tombstones_hide_erased_classes_and_trigger_rebuild(tmp_path):
    with Gallery.open(tmp_path / "g", dim=DIM, index="HNSW16") as g:
        centres = _fill(g, n_classes=200)
        g.erase("c3")
        assert g.stats()["tombstones"] == 3
        assert all(m.label != "c3" for m in g.search(centres[3], k=10)[0])
        for i in range(4, 30):  # > 10 % of the vectors: rebuilt without tombstones
            g.erase(f"c{i}")
        erased = {f"c{i}" for i in range(3, 30)}
        assert not erased & {m.label for row in g.search(centres[:30], k=3) for m in row}
        assert g.wait_for_index(timeout=120)
        assert g.stats()["tombstones"] < 0.1 * g.stats()["templates"]
        assert g.check()["ok"]
    with Gallery.open(tmp_path / "g") as g:
        assert "c3" not in g and g.search(centres[3], k=1)[0][0].label != "c3"


def test_auto_upgrades_as_the_gallery_grows(tmp_path, monkeypatch):
    monkeypatch.setattr(index_mod, "AUTO_EXACT_MAX", 500)
    monkeypatch.setattr(index_mod, "AUTO_NLIST_MIN", 16)
    with Gallery.open(tmp_path / "g", dim=DIM) as g:
        _fill(g, n_classes=100)  # 300 templates: exact
        assert g.stats()["index"] == "Flat"
        centres, vecs = _clustered(300, 3, seed=1)
        g.enroll_many((f"d{i}", vecs[i]) for i in range(300))  # 1,200: IVF, built in the background
        assert g.search(centres[7], k=1)[0][0].label == "d7"  # meanwhile: exact search goes on
        assert g.wait_for_index(timeout=120)
        st = g.stats()
        assert st["index"].startswith("IVF") and st["recall_at_1"] >= 0.9
        assert g.search(centres[7], k=1)[0][0].label == "d7"


def test_stale_snapshot_is_replayed_not_rebuilt(tmp_path, monkeypatch):
    path = tmp_path / "g"
    with Gallery.open(path, dim=DIM, index="IVF16,Flat") as g:
        centres = _fill(g)
        g.save()
        old = {n: (path / n).read_bytes() for n in ("index.faiss", "index.json")}
        g.erase("c0")
        g.enroll("late", centres[5] * 0.9 + 0.1)
    for name, data in old.items():  # put the older snapshot back
        (path / name).write_bytes(data)

    def no_build(*a, **k):
        raise AssertionError("rebuilt instead of replaying the snapshot")

    monkeypatch.setattr(ClassIndex, "build", classmethod(no_build))
    with Gallery.open(path) as g:
        assert "c0" not in g and "late" in g
        assert g.stats()["tombstones"] == 3
        assert g.search(centres[0], k=5)[0][0].label != "c0"
        assert "late" in [m.label for m in g.search(centres[5], k=2)[0]]
        assert g.check()["ok"]


@pytest.mark.parametrize("spec", ["Flat", "IVF16,Flat", "HNSW16", "IVF16,PQ4x4fs,RFlat"])
def test_search_filtered_by_class_metadata(tmp_path, spec):
    centres, vecs = _clustered(400, 3)
    with Gallery.open(tmp_path / "g", dim=DIM, index=spec) as g:
        g.enroll_many((f"c{i}", vecs[i], {"site": "berlin" if i % 4 == 0 else "paris", "n": i})
                      for i in range(400))
        hits = g.search(centres[:40], k=3, where={"site": "berlin"})
        for row in hits:
            assert len(row) == 3 and all(int(m.label[1:]) % 4 == 0 for m in row)
        # the nearest berlin class of a berlin centre is itself
        assert [r[0].label for r in hits[::4]] == [f"c{i}" for i in range(0, 40, 4)]
        assert g.search(centres[:2], k=3, where={"site": "tokyo"}) == [[], []]
        assert g.search(centres[5], k=1, where={"n": 5, "site": "paris"})[0][0].label == "c5"


def test_read_only_processes_follow_one_writer(tmp_path):
    """Readers in other processes search while this process enrolls; they catch up."""
    import json
    import os
    import subprocess
    import sys

    from megaclass.errors import ReadOnlyGalleryError as CE

    path = tmp_path / "g"
    centres, vecs = _clustered(60, 2)
    writer = Gallery.open(path, dim=DIM)
    writer.enroll_many((f"c{i}", vecs[i]) for i in range(30))
    reader_code = (
        "import sys, json, time, numpy as np\n"
        "from megaclass.gallery import Gallery\n"
        "g = Gallery.open(sys.argv[1], read_only=True)\n"
        "q = np.load(sys.argv[2])\n"
        "seen = []\n"
        "deadline = time.time() + 20\n"
        "while time.time() < deadline:\n"
        "    n = len(g); top = g.search(q, k=1)[0][0].label\n"
        "    seen.append(n)\n"
        "    if n == 60 and top == 'c59': break\n"
        "    time.sleep(0.01)\n"
        "print(json.dumps({'first': seen[0], 'last': seen[-1], 'top': top}))\n")
    np.save(tmp_path / "q.npy", centres[59:60])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    readers = [subprocess.Popen([sys.executable, "-c", reader_code, str(path), str(tmp_path / "q.npy")],
                                stdout=subprocess.PIPE, text=True, env=env) for _ in range(2)]
    for i in range(30, 60):
        writer.enroll(f"c{i}", vecs[i])
    results = [json.loads(r.communicate(timeout=60)[0]) for r in readers]
    writer.close()
    for r in results:
        assert r["last"] == 60 and r["top"] == "c59"
    ro = Gallery.open(path, read_only=True)
    with pytest.raises(CE, match="read-only"):
        ro.enroll("x", vecs[0])
    ro.close()


def test_writes_during_a_background_rebuild_are_replayed_into_the_new_index(tmp_path, monkeypatch):
    monkeypatch.setattr(index_mod, "AUTO_EXACT_MAX", 500)
    monkeypatch.setattr(index_mod, "AUTO_NLIST_MIN", 16)
    started, release = threading.Event(), threading.Event()
    real_build = ClassIndex.build.__func__

    def slow_build(cls, dim, read, n, **k):
        if n:  # not the empty index made at creation
            started.set()
            assert release.wait(60)
        return real_build(cls, dim, read, n, **k)

    monkeypatch.setattr(ClassIndex, "build", classmethod(slow_build))
    with Gallery.open(tmp_path / "g", dim=DIM) as g:
        centres, vecs = _clustered(400, 3)
        g.enroll_many((f"c{i}", vecs[i]) for i in range(250))  # 750 templates: upgrade starts
        assert started.wait(60)
        g.enroll_many((f"c{i}", vecs[i]) for i in range(250, 400))  # while the new index is built
        g.erase("c5")
        g.erase("c250")
        assert g.stats()["index"] == "Flat"
        release.set()
        assert g.wait_for_index(timeout=120)
        st = g.stats()
        assert st["index"].startswith("IVF") and st["templates"] == 3 * 398
        assert g.check()["ok"]
        found = [m[0].label for m in g.search(centres, k=1)]
        assert "c5" not in found and "c250" not in found
        assert np.mean([f == f"c{i}" for i, f in enumerate(found)]) >= 0.97
    with Gallery.open(tmp_path / "g") as g:  # the snapshot written at close is the new index
        assert g.stats()["index"].startswith("IVF") and len(g) == 398


def test_closing_during_a_background_rebuild_cancels_it(tmp_path, monkeypatch):
    monkeypatch.setattr(index_mod, "AUTO_EXACT_MAX", 500)
    monkeypatch.setattr(index_mod, "AUTO_NLIST_MIN", 16)
    started = threading.Event()
    real_build = ClassIndex.build.__func__

    def slow_build(cls, dim, read, n, **k):
        def slow_read():
            for chunk in read():
                started.set()
                time.sleep(0.5)
                yield chunk
        return real_build(cls, dim, slow_read, n, **k)

    monkeypatch.setattr(ClassIndex, "build", classmethod(slow_build))
    monkeypatch.setattr("megaclass.gallery.store.Store.iter_templates",
                        lambda self, chunk=64: _chunks_of(self, chunk))
    g = Gallery.open(tmp_path / "g", dim=DIM)
    _, vecs = _clustered(400, 3)
    g.enroll_many((f"c{i}", vecs[i]) for i in range(400))
    assert started.wait(60)
    t = time.perf_counter()
    g.close()  # does not wait for the whole (slow) build
    assert time.perf_counter() - t < 5
    with Gallery.open(tmp_path / "g") as g:
        assert len(g) == 400 and g.check()["ok"]


def _chunks_of(store, chunk):
    cur = store._conn.execute("SELECT id, vector FROM templates ORDER BY id")
    while rows := cur.fetchmany(chunk):
        ids = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
        yield ids, store.codec.decode(ids.tolist(), [r[1] for r in rows])


@pytest.mark.parametrize("spec", ["Flat", "IVF16,SQ8", "HNSW16"])
def test_stats_report_index_memory(tmp_path, spec):
    with Gallery.open(tmp_path / "g", dim=DIM, index=spec) as g:
        _fill(g, n_classes=300)
        st = g.stats()
        vectors = 900 * DIM * 4
        low = vectors // 4 if "SQ8" in spec else vectors
        assert low <= st["index_memory_bytes"] <= 4 * vectors + 100_000
        assert st["rebuilding"] is False


def test_a_due_rebuild_waits_for_a_burst_of_writes_to_end(tmp_path, monkeypatch):
    from megaclass.gallery import upkeep as upkeep_mod

    monkeypatch.setattr(index_mod, "AUTO_EXACT_MAX", 500)
    monkeypatch.setattr(index_mod, "AUTO_NLIST_MIN", 16)
    monkeypatch.setattr(upkeep_mod, "QUIET_SECONDS", 0.5)
    with Gallery.open(tmp_path / "g", dim=DIM) as g:
        centres, vecs = _clustered(400, 3)
        g.enroll_many((f"c{i}", vecs[i]) for i in range(250))  # 750 templates: a rebuild is due
        for i in range(250, 280):  # a burst: a write every 50 ms for 1.5 s
            g.enroll(f"c{i}", vecs[i])
            assert g.stats()["index"] == "Flat" and not g.maintenance_log
            time.sleep(0.05)
        assert g.wait_for_index(timeout=120)
        assert g.stats()["index"].startswith("IVF") and len(g.maintenance_log) == 1
        assert g.search(centres[270], k=1)[0][0].label == "c270"


@pytest.mark.parametrize("spec", ["Flat", "IVF16,Flat", "IVF16,PQ4x4fs,RFlat", "HNSW16"])
def test_a_large_write_indexed_while_committing_is_undone_if_the_commit_fails(tmp_path, monkeypatch, spec):
    """Big enrolls are indexed (hidden) while SQLite commits; a failed commit leaves no trace."""
    from megaclass.gallery import gallery as gallery_mod
    from megaclass.gallery.store import Store

    monkeypatch.setattr(gallery_mod, "EARLY_INDEX_MIN", 100)
    with Gallery.open(tmp_path / "g", dim=DIM, index=spec) as g:
        centres = _fill(g, n_classes=300)
        before = (len(g), g.num_templates, g.search(centres[:50], k=3))
        _, vecs = _clustered(100, 3, seed=1)
        real_rows = Store._template_rows

        def failing_rows(self, *args, **kwargs):  # the store fails after handing out the ids
            raise OSError("disk full")

        monkeypatch.setattr(Store, "_template_rows", failing_rows)
        with pytest.raises(OSError, match="disk full"):
            g.enroll_many((f"new{i}", vecs[i]) for i in range(100))
        assert (len(g), g.num_templates, g.search(centres[:50], k=3)) == before
        assert not g.search(vecs[:, 0].mean(axis=0), k=5) or all(
            not m.label.startswith("new") for m in g.search(vecs[:, 0].mean(axis=0), k=5)[0])
        monkeypatch.setattr(Store, "_template_rows", real_rows)
        assert g.enroll_many((f"new{i}", vecs[i]) for i in range(100)) == 300  # committed this time
        hits = g.search(vecs[:, 0], k=1)
        assert np.mean([h[0].label == f"new{i}" for i, h in enumerate(hits)]) >= 0.97
        report = g.check()
        assert report["ok"], report
