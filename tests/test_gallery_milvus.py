"""The gallery protocol's semantics on Milvus Lite and on a real Milvus server (the
``milvus_server`` fixture), plus what only Milvus has: journaled writes, recovery,
foreign collections, compaction."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

pytest.importorskip("pymilvus")

from _milvus_server import drop_gallery  # noqa: E402
from megaclass.errors import DimensionMismatchError, UnknownLabelError  # noqa: E402
from megaclass.gallery.milvus import MilvusGallery, NotAMilvusGalleryError  # noqa: E402
from test_gallery_protocol import check_semantics  # noqa: E402

_names = itertools.count()


def _bound(uri_of):
    """MilvusGallery whose import_from maps the suite's folder paths to Milvus URIs (the
    protocol lets a backend take a URI there)."""

    class Bound(MilvusGallery):
        @classmethod
        def import_from(cls, export_dir, path, *, key=None):
            return MilvusGallery.import_from(export_dir, uri_of(path), key=key)

    return Bound


@pytest.fixture(params=["milvus-lite", "milvus-server"])
def make(request, tmp_path):
    if request.param == "milvus-lite":
        def uri_of(path):
            return f"milvus-lite://{path}.db"
    else:
        server = request.getfixturevalue("milvus_server")

        def uri_of(path):
            return f"{server.uri_base}/t{next(_names)}_{path.name}"
    cls = _bound(uri_of)
    opened = []

    def factory(path, dim):
        uri = uri_of(path)
        g = cls.open(uri, dim=dim)
        opened.append((g, uri))
        return g

    yield factory
    for g, uri in opened:
        g.close()
        if request.param == "milvus-server":  # left loaded, it would slow every later restart
            with MilvusGallery.open(uri, create=False) as h:
                drop_gallery(h)


def _unit(n, d, seed=0):
    x = np.random.default_rng(seed).normal(size=(n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_protocol_semantics(make, tmp_path):
    check_semantics(make, tmp_path)


def test_replace_many_templates_and_order(make, tmp_path):
    g = make(tmp_path / "r", 16)
    many = _unit(300, 16, 1)  # more templates in one class than the first fetch looks at
    g.enroll_many([(f"c{i}", _unit(2, 16, 10 + i), {"i": i}) for i in range(5)])
    g.enroll("big", many)
    hits = g.search(many[:3], k=4)
    assert all(h[0].label == "big" and len({m.label for m in h}) == 4 for h in hits)
    assert g.enroll("c1", many[:1], {"i": 99}, replace=True) == 1
    assert len(g.templates("c1")) == 1 and g.class_meta("c1") == {"i": 99}
    assert g.labels() == ["c0", "c1", "c2", "c3", "c4", "big"] or g.labels()[-1] == "c1"
    assert len(g) == 6 and g.num_templates == 8 + 300 + 1
    assert g.search(_unit(1, 16, 11), k=1, where={"i": 0})[0][0].label == "c0"
    assert g.check()["ok"]


def test_open_write_is_hidden_then_recovered(make, tmp_path):
    """A write whose journal record was never ended (a crash) stays invisible, and
    recover() rolls it back; a committed erase (hidden) is rolled forward."""
    g = make(tmp_path / "j", 8)
    g.enroll("kept", _unit(1, 8))
    w = 12345
    g.records.begin(w, ["ghost"])
    g.link.client.insert(g.name, [{"label": "ghost", "vector": v, "meta": {}, "model": "", "w": w,
                               "seq": i, "head": i == 0} for i, v in enumerate(_unit(3, 8).tolist())])
    assert "ghost" not in g and g.labels() == ["kept"] and g.num_templates == 1
    assert all(m.label != "ghost" for m in g.search(_unit(3, 8), k=5)[0])
    g.records.mark_commit(777, ["kept"], keep=0)  # an erase cut short after its commit record
    assert len(g) == 0 and g.search(_unit(1, 8), k=3) == [[]]
    assert not g.check()["ok"]
    assert sorted(g.recover()) == [777, w]
    assert g.check()["ok"] and g.link.count("id >= 0") == 0


def test_foreign_or_other_dim_collections_refused(tmp_path):
    from pymilvus import MilvusClient

    uri = f"milvus-lite://{tmp_path}/f.db"
    with MilvusGallery.open(uri, dim=8) as g:
        g.enroll("a", _unit(1, 8))
    with pytest.raises(DimensionMismatchError, match="has dim 8"):
        MilvusGallery.open(uri, dim=16)
    client = MilvusClient(str(tmp_path / "f.db"))
    client.create_collection("other", dimension=8)
    client.insert("other", [{"id": 1, "vector": [0.5] * 8}])
    client.close()
    with pytest.raises(NotAMilvusGalleryError, match="not created by megaclass"):
        MilvusGallery.open(f"milvus-lite://{tmp_path}/f.db?collection=other", dim=8)
    client = MilvusClient(str(tmp_path / "f.db"))
    assert client.query("other", filter="id >= 0", output_fields=["count(*)"])[0]["count(*)"] == 1
    assert not client.has_collection("other__megaclass")
    client.close()
    with MilvusGallery.open(uri) as g:
        assert g.labels() == ["a"]
        with pytest.raises(UnknownLabelError):
            g.erase("b")


def test_recognizer_uri_cli_and_migrate(tmp_path):
    """Recognizer and the CLI open milvus-lite:// URIs; `gallery migrate` copies a local
    gallery into Milvus Lite and back, and resumes (classes already there are skipped)."""
    import json

    from typer.testing import CliRunner

    from megaclass import GlyphSource, Recognizer
    from megaclass.cli import _register_area_commands, app
    from megaclass.gallery import Gallery
    from megaclass.models.encoder import Encoder, EncoderConfig

    _register_area_commands()  # what main() does: the gallery command group
    encoder = Encoder(EncoderConfig(dim=16, widths=(8,), blocks=1))  # untrained: only plumbing here
    uri = f"milvus-lite://{tmp_path}/rec.db"
    with Recognizer(encoder, gallery=uri) as rec:
        assert type(rec.gallery).__name__ == "MilvusGallery"
        for c in (1, 2, 3):
            rec.enroll(f"g{c}", GlyphSource.samples(c, n=1))
        best = rec.identify(GlyphSource.samples(2, n=1), k=2, threshold=None)[0]
        assert best.candidates[0].label == "g2" and best.candidates[0].score == pytest.approx(1.0, abs=1e-4)
    with Gallery.open(tmp_path / "local", dim=8) as local:
        local.enroll_many([(f"c{i}", _unit(2, 8, i), {"i": i}) for i in range(30)])
        local.set_setting("threshold", 0.4)
    dst = f"milvus-lite://{tmp_path}/mig.db"
    r = CliRunner().invoke(app, ["gallery", "migrate", str(tmp_path / "local"), dst, "--batch", "7",
                                 "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)["copied"] == 30
    with Gallery.open(tmp_path / "local") as local:
        local.enroll("late", _unit(1, 8, 99))
    r = CliRunner().invoke(app, ["gallery", "migrate", str(tmp_path / "local"), dst, "--json"])
    out = json.loads(r.output)
    assert (out["copied"], out["skipped"], out["destination_classes"]) == (1, 30, 31)
    r = CliRunner().invoke(app, ["gallery", "migrate", dst, str(tmp_path / "back"), "--json"])
    assert r.exit_code == 0, r.output
    with Gallery.open(tmp_path / "local") as a, Gallery.open(tmp_path / "back") as b:
        assert a.labels() == b.labels() and b.get_setting("threshold") == 0.4
        np.testing.assert_allclose(a.templates("c5"), b.templates("c5"), atol=1e-6)
        assert b.class_meta("c5") == {"i": 5}
    r = CliRunner().invoke(app, ["stats", "-g", dst, "--json"])
    assert r.exit_code == 0 and json.loads(r.output)["classes"] == 31


def test_settings_are_the_users_not_the_backends(make, tmp_path):
    """settings() (the protocol's): every set_setting key, none of the backend's own (its
    index knobs and recall) -- what export and migrate carry over."""
    from megaclass.gallery import Gallery

    g = make(tmp_path / "s", 8)
    g.enroll_many([(f"c{i}", _unit(2, 8, i)) for i in range(20)])
    g.tune()  # writes the backend's own milvus_* records
    g.set_setting("threshold", 0.4)
    g.set_setting("custom", {"a": [1, 2]})
    assert g.settings() == {"threshold": 0.4, "custom": {"a": [1, 2]}}
    with Gallery.open(tmp_path / "local", dim=8) as local:
        local.set_setting("custom", 1)
        assert local.settings() == {"custom": 1}
