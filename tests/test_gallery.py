"""Tests of megaclass.gallery: store, derived FAISS index, class-collapse search."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from megaclass.errors import (
    ConfigError,
    DimensionMismatchError,
    DuplicateLabelError,
    EmptyClassError,
    InvalidInputError,
    MegaclassError,
    NotAGalleryError,
    UnknownLabelError,
)
from megaclass.gallery import Gallery, Match, as_unit_vectors
from megaclass.gallery.index import ClassIndex

DIM = 16
SRC = str(Path(__file__).resolve().parents[1] / "src")


def unit(x):
    x = np.asarray(x, dtype=np.float64)
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


@pytest.fixture
def rng():
    return np.random.default_rng(0)


@pytest.fixture
def gal(tmp_path):
    g = Gallery.open(tmp_path / "g", dim=DIM)
    yield g
    g.close()


def state(g: Gallery) -> dict:
    """Everything observable about a gallery's content."""
    return {
        "labels": g.labels(),
        "n": g.num_templates,
        "templates": {lab: g.templates(lab).tobytes() for lab in g.labels()},
        "meta": {lab: g.class_meta(lab) for lab in g.labels()},
        "seq": g.stats()["last_seq"],
    }


def brute_force(g: Gallery, queries: np.ndarray, k: int) -> list[list[tuple[str, float]]]:
    best = {lab: (unit(queries) @ g.templates(lab).T).max(axis=1) for lab in g.labels()}
    out = []
    for i in range(len(queries)):
        ranked = sorted(best, key=lambda lab: -best[lab][i])[:k]
        out.append([(lab, float(best[lab][i])) for lab in ranked])
    return out


def fill(g: Gallery, rng, n_classes=60, max_t=5) -> None:
    g.enroll_many(
        (f"c{i}", rng.standard_normal((int(rng.integers(1, max_t + 1)), DIM)))
        for i in range(n_classes)
    )


def run_py(code: str) -> str:
    env = {**os.environ, "PYTHONPATH": SRC}
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env=env, timeout=60)
    assert res.returncode == 0, res.stderr
    return res.stdout


# ---------------------------------------------------------------------- enroll / search
def test_enroll_search_collapses_templates(gal, rng):
    base = unit(rng.standard_normal(DIM))
    near = base + 0.05 * rng.standard_normal((5, DIM))
    assert gal.enroll("a", near, {"note": "five"}) == 5
    assert gal.enroll("b", rng.standard_normal((2, DIM))) == 2
    assert gal.enroll("c", rng.standard_normal(DIM)) == 1
    res = gal.search(base, k=3)
    assert len(res) == 1
    assert sorted(m.label for m in res[0]) == ["a", "b", "c"]  # distinct classes
    assert res[0][0].label == "a"
    assert res[0][0].score == pytest.approx(float((unit(near) @ base).max()), abs=1e-5)
    scores = [m.score for m in res[0]]
    assert scores == sorted(scores, reverse=True)
    assert isinstance(res[0][0], Match) and isinstance(res[0][0].score, float)
    assert len(gal) == 3 and gal.num_templates == 8 and "a" in gal and "z" not in gal
    assert 3 not in gal and gal.class_meta("a") == {"note": "five"}
    assert gal.templates("a").shape == (5, DIM) and gal.templates("a").dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(gal.templates("a"), axis=1), 1, atol=1e-6)


def test_k_larger_than_classes_and_empty_gallery(gal, rng):
    q = rng.standard_normal((4, DIM))
    assert gal.search(q, k=5) == [[], [], [], []]
    fill(gal, rng, n_classes=3)
    res = gal.search(q, k=10)
    assert [len(r) for r in res] == [3, 3, 3, 3]
    assert all(len({m.label for m in r}) == 3 for r in res)
    assert gal.search(np.empty((0, DIM)), k=2) == []
    for bad_k in (0, -1, 1.5, True):
        with pytest.raises(ConfigError):
            gal.search(q, k=bad_k)


@pytest.mark.parametrize("narrow", [False, True])
def test_search_matches_brute_force(gal, rng, monkeypatch, narrow):
    fill(gal, rng, n_classes=80, max_t=6)
    if narrow:  # force the widen-and-retry path: first pass returns too few classes
        monkeypatch.setattr(gal.state.index, "max_per_class", lambda: 1)
    q = rng.standard_normal((30, DIM))
    got = gal.search(q, k=7)
    want = brute_force(gal, q, 7)
    for g_row, w_row in zip(got, want, strict=True):
        assert [m.label for m in g_row] == [lab for lab, _ in w_row]
        np.testing.assert_allclose([m.score for m in g_row], [s for _, s in w_row], atol=1e-5)


def test_enroll_many_and_replace(gal, rng):
    n = gal.enroll_many([("x", rng.standard_normal((2, DIM))),
                         ("y", rng.standard_normal(DIM), {"k": 1}),
                         ["z", rng.standard_normal((3, DIM)).tolist()]])
    assert n == 6 and gal.labels() == ["x", "y", "z"] and gal.class_meta("y") == {"k": 1}
    assert gal.enroll_many([]) == 0
    new = unit(rng.standard_normal((4, DIM)))
    assert gal.enroll("y", new, {"k": 2}, replace=True) == 4
    np.testing.assert_allclose(gal.templates("y"), new, atol=1e-6)
    assert gal.class_meta("y") == {"k": 2} and gal.num_templates == 9
    assert gal.search(new[0], k=1)[0][0] == Match("y", pytest.approx(1.0, abs=1e-5))
    assert gal.labels() == ["x", "y", "z"]


def test_add_templates(gal, rng):
    gal.enroll("a", rng.standard_normal(DIM))
    gal.enroll("b", rng.standard_normal(DIM))
    extra = unit(rng.standard_normal((2, DIM)))
    assert gal.add_templates("a", extra) == 2
    assert gal.templates("a").shape == (3, DIM) and gal.num_templates == 4
    assert gal.search(extra[1], k=1)[0][0].label == "a"
    before = state(gal)
    with pytest.raises(UnknownLabelError, match="nope"):
        gal.add_templates("nope", extra)
    assert state(gal) == before


def test_erase(gal, rng, tmp_path):
    vecs = unit(rng.standard_normal((3, DIM)))
    gal.enroll("a", vecs)
    gal.enroll("b", rng.standard_normal(DIM))
    assert gal.erase("a") == 3
    assert "a" not in gal and gal.labels() == ["b"] and gal.num_templates == 1
    assert all(m.label != "a" for row in gal.search(vecs, k=5) for m in row)
    with pytest.raises(UnknownLabelError):
        gal.templates("a")
    before = state(gal)
    with pytest.raises(UnknownLabelError):
        gal.erase("a")
    assert state(gal) == before
    gal.close()
    with Gallery.open(tmp_path / "g") as g2:
        assert g2.labels() == ["b"] and g2.num_templates == 1
        assert [m.label for m in g2.search(vecs, k=5)[0]] == ["b"]
        g2.enroll("a", vecs)  # an erased label can be enrolled again
        assert g2.search(vecs[0], k=1)[0][0].label == "a"


# ---------------------------------------------------------------------- persistence
def test_persistence_across_processes(tmp_path, rng):
    path = tmp_path / "g"
    q = rng.standard_normal((3, DIM))
    with Gallery.open(path, dim=DIM) as g:
        fill(g, rng, n_classes=20)
        g.set_setting("threshold", 0.42)
        want = [[(m.label, m.score) for m in row] for row in g.search(q, k=3)]
    out = run_py(
        "import json, numpy as np\n"
        "from megaclass.gallery import Gallery\n"
        f"g = Gallery.open({str(path)!r}, create=False)\n"
        f"q = np.array({q.tolist()!r})\n"
        "res = [[(m.label, m.score) for m in r] for r in g.search(q, k=3)]\n"
        "print(json.dumps({'res': res, 'n': len(g), 'dim': g.dim,\n"
        "                  'thr': g.get_setting('threshold')}))\n"
        "g.enroll('from_child', np.ones(g.dim)); g.close()\n")
    got = json.loads(out)
    assert got["n"] == 20 and got["dim"] == DIM and got["thr"] == 0.42
    for g_row, w_row in zip(got["res"], want, strict=True):
        assert [lab for lab, _ in g_row] == [lab for lab, _ in w_row]
        np.testing.assert_allclose([s for _, s in g_row], [s for _, s in w_row], atol=1e-6)
    with Gallery.open(path) as g:
        assert "from_child" in g and len(g) == 21
        assert g.search(np.ones(DIM), k=1)[0][0].label == "from_child"


def test_other_process_writes_while_open(tmp_path, rng):
    path = tmp_path / "g"
    g = Gallery.open(path, dim=DIM)
    fill(g, rng, n_classes=5)
    run_py("import numpy as np\n"
           "from megaclass.gallery import Gallery\n"
           f"with Gallery.open({str(path)!r}) as g:\n"
           "    g.enroll('child', np.ones(g.dim)); g.erase('c1')\n")
    assert "child" in g and "c1" not in g  # caught up on the next call
    assert g.search(np.ones(DIM), k=1)[0][0].label == "child"
    run_py("import numpy as np\n"
           "from megaclass.gallery import Gallery\n"
           f"g = Gallery.open({str(path)!r}); g.enroll('child2', -np.ones(g.dim)); g.close()\n")
    g.enroll("parent", rng.standard_normal(DIM))
    assert {"child", "child2", "parent"} <= set(g.labels()) and len(g) == 7
    g.close()
    with Gallery.open(path) as g2:
        assert g2.state.snapshot_seq == g2.stats()["last_seq"]  # parent's snapshot is current
        assert sorted(g2.labels()) == sorted(["c0", "c2", "c3", "c4", "child", "child2",
                                              "parent"])
        assert g2.search(-np.ones(DIM), k=1)[0][0].label == "child2"


def _no_build(*a, **k):
    raise AssertionError("index was rebuilt instead of loaded from the snapshot")


def test_snapshot_reused(tmp_path, rng, monkeypatch):
    path = tmp_path / "g"
    with Gallery.open(path, dim=DIM) as g:
        fill(g, rng, n_classes=10)
    assert (path / "index.faiss").exists() and (path / "index.json").exists()
    monkeypatch.setattr(ClassIndex, "build", classmethod(_no_build))
    with Gallery.open(path) as g:
        assert len(g) == 10
        q = rng.standard_normal((5, DIM))
        assert [[m.label for m in r] for r in g.search(q, k=4)] == [
            [lab for lab, _ in r] for r in brute_force(g, q, 4)]


@pytest.mark.parametrize("damage", ["delete", "corrupt", "truncate", "stale", "foreign"])
def test_snapshot_rebuilt_when_unusable(tmp_path, rng, damage):
    path = tmp_path / "g"
    q = rng.standard_normal((6, DIM))
    with Gallery.open(path, dim=DIM) as g:
        fill(g, rng, n_classes=12)
        g.save()
        old = {n: (path / n).read_bytes() for n in ("index.faiss", "index.json")}
        g.erase("c0")
        g.enroll("late", q[0])
        want = [[m.label for m in r] for r in g.search(q, k=5)]
    faiss_file = path / "index.faiss"
    if damage == "delete":
        faiss_file.unlink()
    elif damage == "corrupt":
        data = bytearray(faiss_file.read_bytes())
        data[len(data) // 2: len(data) // 2 + 64] = os.urandom(64)
        faiss_file.write_bytes(bytes(data))
    elif damage == "truncate":
        faiss_file.write_bytes(faiss_file.read_bytes()[:100])
    elif damage == "stale":  # a snapshot from before the last ops
        for name, data in old.items():
            (path / name).write_bytes(data)
    elif damage == "foreign":  # same seq, another gallery's snapshot
        other = tmp_path / "other"
        with Gallery.open(other, dim=DIM) as g2:
            fill(g2, rng, n_classes=12)
            g2.erase("c0")
            g2.enroll("late", q[1])
        for name in ("index.faiss", "index.json"):
            shutil.copy(other / name, path / name)
    with Gallery.open(path) as g:
        assert g.state.snapshot_seq is None  # rebuilt
        assert "c0" not in g and "late" in g and len(g) == 12
        assert [[m.label for m in r] for r in g.search(q, k=5)] == want
    with Gallery.open(path) as g:  # close() wrote a fresh snapshot
        assert g.state.snapshot_seq == g.stats()["last_seq"]


# ---------------------------------------------------------------------- atomicity / errors
def test_enroll_many_atomic(gal, rng):
    gal.enroll("keep", rng.standard_normal((2, DIM)), {"v": 1})
    before = state(gal)
    bad = rng.standard_normal((2, DIM))
    bad[1, 3] = np.nan
    items = [("n1", rng.standard_normal(DIM)), ("n2", rng.standard_normal(DIM)), ("n3", bad)]
    with pytest.raises(InvalidInputError, match=r"item 2 .*NaN"):
        gal.enroll_many(items)
    assert state(gal) == before
    # store-level failure after the first rows of the transaction were written
    with pytest.raises(DuplicateLabelError, match="keep"):
        gal.enroll_many([("n1", rng.standard_normal(DIM)), ("keep", rng.standard_normal(DIM))])
    assert state(gal) == before
    with pytest.raises(DuplicateLabelError):
        gal.enroll("keep", rng.standard_normal(DIM), {"v": 2})
    with pytest.raises(DuplicateLabelError, match="twice"):
        gal.enroll_many([("d", rng.standard_normal(DIM)), ("d", rng.standard_normal(DIM))],
                        replace=True)
    with pytest.raises(InvalidInputError):
        gal.enroll_many([("x",)])
    assert state(gal) == before
    assert [m.label for m in gal.search(rng.standard_normal((3, DIM)), k=3)[0]] == ["keep"]


class FakeTensor:
    """Duck-typed torch tensor: only .detach().cpu().numpy()."""

    def __init__(self, a):
        self.a = np.asarray(a, dtype=np.float32)

    def detach(self):
        return self

    def cpu(self):
        return self

    def numpy(self):
        return self.a


def test_vector_validation():
    np.testing.assert_allclose(as_unit_vectors([3, 4], 2), [[0.6, 0.8]], atol=1e-7)
    out = as_unit_vectors(FakeTensor([[0, 2.0], [5, 0]]), 2)
    assert out.dtype == np.float32 and out.shape == (2, 2)
    np.testing.assert_allclose(out, [[0, 1], [1, 0]])
    assert as_unit_vectors(np.full((1, 2), 1e30), 2).dtype == np.float32


def _bad(kind):
    v = np.ones((2, DIM))
    if kind == "nan":
        v[0, 0] = np.nan
    elif kind == "inf":
        v[1, 2] = np.inf
    elif kind == "zero":
        v[1] = 0
    return v


@pytest.mark.parametrize("vectors, err, msg", [
    (np.ones((2, DIM + 1)), DimensionMismatchError, f"expected .*{DIM}.*got .*{DIM + 1}"),
    (np.ones(DIM - 1), DimensionMismatchError, str(DIM - 1)),
    (_bad("nan"), InvalidInputError, "NaN"),
    (_bad("inf"), InvalidInputError, "inf"),
    (_bad("zero"), InvalidInputError, "zero"),
    (np.empty((0, DIM)), EmptyClassError, "no vectors"),
    ([], EmptyClassError, "no vectors"),
    (np.ones((1, 2, DIM)), InvalidInputError, "shape"),
    (np.ones(()), InvalidInputError, "shape"),
    ([["a"] * DIM], InvalidInputError, "numeric"),
    ([[1.0] * DIM, [1.0]], InvalidInputError, "numeric"),
])
def test_bad_vectors_leave_gallery_unchanged(gal, rng, vectors, err, msg):
    gal.enroll("a", rng.standard_normal(DIM))
    before = state(gal)
    for call in (lambda: gal.enroll("new", vectors), lambda: gal.add_templates("a", vectors),
                 lambda: gal.enroll("a", vectors, replace=True),
                 lambda: gal.enroll_many([("new", vectors)])):
        with pytest.raises(err, match=msg):
            call()
        assert state(gal) == before
    if err is not EmptyClassError:
        with pytest.raises(err):
            gal.search(vectors)


@pytest.mark.parametrize("label", ["", None, 3, b"x"])
def test_bad_labels_and_meta(gal, rng, label):
    before = state(gal)
    with pytest.raises(InvalidInputError):
        gal.enroll(label, rng.standard_normal(DIM))
    with pytest.raises(InvalidInputError):
        gal.erase(label)
    with pytest.raises(InvalidInputError):
        gal.enroll("ok", rng.standard_normal(DIM), meta={"x": object()})
    with pytest.raises(InvalidInputError):
        gal.enroll("ok", rng.standard_normal(DIM), meta=["not", "a", "dict"])
    assert state(gal) == before


def test_open_errors(tmp_path, rng):
    with pytest.raises(ConfigError):
        Gallery.open(tmp_path / "new")  # no dim
    with pytest.raises(ConfigError):
        Gallery.open(tmp_path / "new", dim=DIM, create=False)
    with pytest.raises(ConfigError):
        Gallery.open(tmp_path / "new", dim=0)
    assert not (tmp_path / "new").exists()
    (tmp_path / "empty").mkdir()
    Gallery.open(tmp_path / "empty", dim=DIM).close()  # an empty dir becomes a gallery
    with Gallery.open(tmp_path / "g", dim=DIM) as g:
        g.enroll("a", rng.standard_normal(DIM))
        before = state(g)
    with pytest.raises(DimensionMismatchError, match=f"{DIM}.*{DIM * 2}"):
        Gallery.open(tmp_path / "g", dim=DIM * 2)
    with Gallery.open(tmp_path / "g", dim=DIM) as g:
        assert state(g) == before

    other = tmp_path / "photos"
    other.mkdir()
    (other / "cat.jpg").write_bytes(b"\xff\xd8")
    with pytest.raises(NotAGalleryError, match=str(other)):
        Gallery.open(other, dim=DIM)
    assert os.listdir(other) == ["cat.jpg"]
    (tmp_path / "file").write_text("x")
    with pytest.raises(NotAGalleryError, match="file"):
        Gallery.open(tmp_path / "file", dim=DIM)

    garbage = tmp_path / "garbage"
    garbage.mkdir()
    junk = b"this is not sqlite at all" * 100
    (garbage / "gallery.db").write_bytes(junk)
    with pytest.raises(NotAGalleryError, match=str(garbage)):
        Gallery.open(garbage)
    assert (garbage / "gallery.db").read_bytes() == junk

    foreign = tmp_path / "foreign"
    foreign.mkdir()
    con = sqlite3.connect(foreign / "gallery.db")
    con.execute("CREATE TABLE other (x)")
    con.commit()
    con.close()
    with pytest.raises(NotAGalleryError, match="missing tables"):
        Gallery.open(foreign, dim=DIM)


def test_settings_round_trip(tmp_path):
    with Gallery.open(tmp_path / "g", dim=DIM) as g:
        assert g.get_setting("threshold") is None and g.get_setting("x", 7) == 7
        g.set_setting("threshold", 0.31)
        g.set_setting("model", {"fingerprint": "abc", "layers": [1, 2]})
        g.set_setting("threshold", 0.35)
        assert g.get_setting("dim") == DIM
        with pytest.raises(ConfigError):
            g.set_setting("dim", 3)
        with pytest.raises(InvalidInputError):
            g.set_setting("bad", float("nan"))
        with pytest.raises(InvalidInputError):
            g.set_setting("", 1)
    with Gallery.open(tmp_path / "g") as g:
        assert g.get_setting("threshold") == 0.35
        assert g.get_setting("model") == {"fingerprint": "abc", "layers": [1, 2]}
        assert g.get_setting("bad") is None and g.dim == DIM


def test_stats_close_and_threads(tmp_path, rng):
    g = Gallery.open(tmp_path / "g", dim=DIM)
    vecs = [rng.standard_normal((2, DIM)) for _ in range(40)]

    def worker(t):
        for i in range(t, 40, 4):
            g.enroll(f"t{i}", vecs[i])
            g.search(vecs[i], k=3)

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    s = g.stats()
    assert s["classes"] == 40 and s["templates"] == 80 and s["dim"] == DIM
    assert s["index"] == "Flat" and s["index_requested"] == "auto" and s["disk_bytes"] > 0
    g.close()
    g.close()  # idempotent
    with pytest.raises(MegaclassError, match="closed"):
        g.search(vecs[0])
    assert "closed" in repr(g)


def test_imports_without_torch():
    out = run_py("import sys; sys.modules['torch'] = None\n"
                 "import megaclass.gallery, numpy as np, tempfile\n"
                 "g = megaclass.gallery.Gallery.open(tempfile.mkdtemp() + '/g', dim=3)\n"
                 "g.enroll('a', np.ones(3)); print(g.search(np.ones(3))[0][0].label)\n"
                 "print('torch' in sys.modules and sys.modules['torch'] is not None)")
    assert out.split() == ["a", "False"]


def test_write_racing_another_writer_reloads(tmp_path, rng, monkeypatch):
    g1 = Gallery.open(tmp_path / "g", dim=DIM)
    g1.enroll("a", rng.standard_normal(DIM))
    with Gallery.open(tmp_path / "g") as g2:  # a second handle writes behind g1's back
        g2.enroll("b", rng.standard_normal(DIM))
    real, calls = g1.state.store.last_seq, []

    def stale_once():  # g1's catch-up check misses the write; the transaction sees it
        calls.append(1)
        return g1.state.seq if len(calls) == 1 else real()

    monkeypatch.setattr(g1.state.store, "last_seq", stale_once)
    g1.enroll("c", rng.standard_normal(DIM))
    monkeypatch.undo()
    assert g1.labels() == ["a", "b", "c"] and g1.num_templates == 3
    g1.close()
