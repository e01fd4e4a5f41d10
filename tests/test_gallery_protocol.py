"""The gallery protocol: the SQLite + FAISS Gallery satisfies it, and honours the semantics
its docstrings state. ``check_semantics`` takes a factory, so another backend (Milvus)
runs the same checks by adding itself to ``BACKENDS``."""

from __future__ import annotations

import numpy as np
import pytest

from megaclass.errors import (
    ConfigError,
    DuplicateLabelError,
    GalleryClosedError,
    InvalidInputError,
    ModelMismatchError,
    UnknownLabelError,
)
from megaclass.gallery import Gallery, GalleryProtocol


def _local(path, dim):
    return Gallery.open(path, dim=dim)


BACKENDS = {"sqlite+faiss": _local}


def test_gallery_class_satisfies_protocol(tmp_path):
    with Gallery.open(tmp_path / "g", dim=4) as g:
        checked: GalleryProtocol = g  # what mypy checks member by member
        assert isinstance(checked, GalleryProtocol)


def test_protocol_members_exist_on_gallery():
    """Every protocol member (methods, properties, attributes) is on Gallery with the same
    kind, so a typo on either side fails here and not in a backend."""
    members = {n for n in vars(GalleryProtocol) if not n.startswith("_") or n in
               ("__len__", "__contains__", "__enter__", "__exit__")} - {"_is_protocol"}
    members |= set(GalleryProtocol.__annotations__)
    for name in sorted(members):
        assert hasattr(Gallery, name) or name in Gallery.__annotations__, name


def _unit(rng, n, d):
    x = rng.normal(size=(n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def check_semantics(make, tmp_path) -> None:
    """The semantics GalleryProtocol's docstrings promise, on a fresh gallery of dim 8."""
    rng = np.random.default_rng(0)
    g = make(tmp_path / "g", 8)
    assert isinstance(g, GalleryProtocol) and g.dim == 8 and len(g) == 0
    assert g.search(_unit(rng, 2, 8), k=3) == [[], []]
    a, b = _unit(rng, 2, 8), _unit(rng, 1, 8)
    g.set_setting("model_fingerprint", "m1")  # recorded as the templates' model by the writes
    assert g.enroll("a", a * 3.0, {"site": "x"}) == 2  # normalised by the gallery
    assert g.enroll_many([("b", b), ("c", _unit(rng, 1, 8), {"site": "y"})]) == 2
    assert g.labels() == ["a", "b", "c"] and len(g) == 3 and g.num_templates == 4
    assert "a" in g and "z" not in g and 3 not in g
    np.testing.assert_allclose(np.linalg.norm(g.templates("a"), axis=1), 1.0, atol=1e-5)
    assert g.class_meta("c") == {"site": "y"}
    with pytest.raises(DuplicateLabelError):
        g.enroll("a", b)
    with pytest.raises(DuplicateLabelError):  # all or nothing: "d" is not enrolled either
        g.enroll_many([("d", b), ("a", b)])
    assert "d" not in g
    with pytest.raises(InvalidInputError):
        g.enroll("bad", np.zeros((1, 8)))
    hits = g.search(np.vstack([a[1], b[0]]), k=5)
    assert [m.label for m in hits[0]][0] == "a" and [m.label for m in hits[1]][0] == "b"
    assert len(hits[0]) == 3 and len({m.label for m in hits[0]}) == 3  # distinct classes
    assert hits[0][0].score == pytest.approx(1.0, abs=1e-5)
    assert [m.label for m in g.search(a[0], k=5, where={"site": "y"})[0]] == ["c"]
    with pytest.raises(ConfigError):
        g.search(a, k=0)
    assert g.add_templates("b", a[:1]) == 1 and len(g.templates("b")) == 2
    with pytest.raises(UnknownLabelError):
        g.add_templates("nobody", a)
    g.set_setting("threshold", 0.5)
    assert g.get_setting("threshold") == 0.5 and g.get_setting("nothing", 7) == 7
    assert g.model == "m1"
    with pytest.raises(ModelMismatchError):
        g.search(a, model="m2")
    assert g.search(a[1], model="m1")[0][0].label == "a"
    assert g.erase("a") == 2 and "a" not in g
    assert all(m.label != "a" for m in g.search(a[0], k=5)[0])
    with pytest.raises(UnknownLabelError):
        g.erase("a")
    assert g.erased_tag("a").startswith("erased:") and g.erased_tag("a") == g.erased_tag("a")
    st = g.stats()
    assert {"classes", "templates", "dim", "index", "encrypted", "disk_bytes"} <= set(st)
    assert (st["classes"], st["templates"]) == (2, 3)
    report = g.check()
    assert report["ok"] and report["problems"] == [] and report["classes"] == 2
    out = g.export(tmp_path / "export")
    g.close()
    g.close()  # idempotent
    with pytest.raises(GalleryClosedError):
        len(g)
    with type(g).import_from(out, tmp_path / "imported") as h:
        assert h.labels() == ["b", "c"] and h.get_setting("threshold") == 0.5


@pytest.mark.parametrize("backend", sorted(BACKENDS))
def test_backend_semantics(backend, tmp_path):
    check_semantics(BACKENDS[backend], tmp_path)
