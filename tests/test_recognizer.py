import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from megaclass import GlyphSource, Recognizer
from megaclass.errors import (
    ConfigError,
    CorruptImageError,
    DimensionMismatchError,
    EmptyClassError,
    InvalidInputError,
    NotAGalleryError,
    UnknownLabelError,
)
from megaclass.gallery import Gallery
from megaclass.models import Encoder, EncoderConfig

ENROLLED = range(5000, 5040)


@pytest.fixture()
def rec(tiny_encoder, tmp_path):
    r = Recognizer(tiny_encoder, gallery=tmp_path / "g")
    r.enroll_many((f"c{i}", GlyphSource.samples(i, n=4, seed=1)) for i in ENROLLED)
    yield r
    r.close()


def _state(g: Gallery):
    return sorted(g.labels()), g.num_templates


def test_identify_unseen_classes(rec):
    images, cls = GlyphSource.batch(np.asarray(ENROLLED), 1, seed=2)
    decisions = rec.identify(images, k=5, threshold=None)  # candidates only: never calibrated
    top1 = np.mean([d.candidates[0].label == f"c{c}" for d, c in zip(decisions, cls, strict=False)])
    assert top1 > 0.5  # 40 unseen classes, tiny encoder: well above chance (2.5 %)
    assert all(len(d.candidates) == 5 for d in decisions)
    assert all(d.label is not None for d in decisions)  # threshold=None: no rejection


def test_calibrate_then_reject_unknowns(rec, tiny_model_dir):
    non_mated, _ = GlyphSource.batch(np.arange(9000, 9300), 1, seed=3)
    cal = rec.calibrate(non_mated, target_fpir=0.05)
    assert cal.achieved_fpir <= 0.05 and cal.n_non_mated == 300
    held_out, _ = GlyphSource.batch(np.arange(9500, 9800), 1, seed=3)
    fp = np.mean([d.label is not None for d in rec.identify(held_out, k=1)])
    assert fp < 0.05 + 4 * np.sqrt(0.05 * 0.95 / 300)  # within sampling error
    # the threshold is stored in the gallery: a fresh recognizer uses it
    path = rec.gallery.path
    rec.close()
    again = Recognizer(tiny_model_dir, gallery=path)
    assert again.threshold == pytest.approx(cal.threshold)
    again.close()


def test_verify(rec):
    rec.threshold = 0.5
    same = rec.verify(GlyphSource.samples(5001, n=1, seed=7), "c5001")
    assert same.score > rec.verify(GlyphSource.samples(5002, n=1, seed=7), "c5001").score
    with pytest.raises(UnknownLabelError, match="not enrolled"):
        rec.verify(GlyphSource.samples(1), "nobody")


def test_erase_removes_class(rec):
    q = GlyphSource.samples(5003, n=1, seed=2)
    assert rec.erase("c5003") == 1  # "mean" mode: one imprinted template per class
    assert "c5003" not in rec.gallery
    assert all(m.label != "c5003" for m in rec.identify(q, k=40, threshold=None)[0].candidates)
    with pytest.raises(UnknownLabelError):
        rec.erase("c5003")


def test_gallery_persists_across_processes(rec, tiny_model_dir):
    path = rec.gallery.path
    rec.close()
    code = (
        "import json,sys; from megaclass import Recognizer, GlyphSource;"
        "r=Recognizer(sys.argv[1], gallery=sys.argv[2]);"
        "d=r.identify(GlyphSource.samples(5007, n=1, seed=1), threshold=None)[0];"
        "print(json.dumps([len(r), d.candidates[0].label]))"
    )
    out = subprocess.run([sys.executable, "-c", code, str(tiny_model_dir), str(path)],
                         capture_output=True, text=True, check=True)
    assert json.loads(out.stdout) == [40, "c5007"]


def test_enroll_is_atomic_on_bad_input(rec, tmp_path):
    before = _state(rec.gallery)
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image at all")
    with pytest.raises(CorruptImageError, match="bad.png"):
        rec.enroll("new", [str(bad)])
    with pytest.raises(EmptyClassError):
        rec.enroll("new", [])
    with pytest.raises(InvalidInputError):
        rec.enroll("new", torch.full((2, 1, 32, 32), float("nan")))
    with pytest.raises(CorruptImageError):
        rec.enroll_many([("ok", GlyphSource.samples(1, n=2)), ("bad", [str(bad)])])
    assert _state(rec.gallery) == before


def test_incompatible_model_and_bad_gallery(rec, tmp_path, tiny_encoder):
    other = Encoder(EncoderConfig(dim=24, widths=(8,)))
    with pytest.raises(DimensionMismatchError, match="24-d"):
        Recognizer(other, gallery=rec.gallery.path)
    same_dim = Encoder(EncoderConfig(dim=tiny_encoder.dim, widths=(8,)))
    with pytest.raises(ConfigError, match="not comparable"):
        Recognizer(same_dim, gallery=rec.gallery)
    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / "notes.txt").write_text("hello")
    with pytest.raises(NotAGalleryError):
        Recognizer(tiny_encoder, gallery=junk)


def test_wrong_dimension_vectors_rejected(rec):
    with pytest.raises(DimensionMismatchError):
        rec.gallery.enroll("x", np.ones((1, 7), np.float32))


def test_mean_template_updates_exactly(tiny_encoder, tmp_path):
    rec = Recognizer(tiny_encoder, gallery=tmp_path / "m")
    a, b = GlyphSource.samples(11, n=3), GlyphSource.samples(11, n=4, start=3)
    rec.enroll("x", a)
    rec.add_samples("x", b)
    once = Recognizer(tiny_encoder, gallery=tmp_path / "once")
    once.enroll("x", torch.cat([a, b]))
    np.testing.assert_allclose(rec.gallery.templates("x"), once.gallery.templates("x"), atol=1e-5)
    assert rec.gallery.class_meta("x")["_samples"] == 7
    with pytest.raises(UnknownLabelError):
        rec.add_samples("nobody", a)


def test_each_mode_keeps_every_template(tiny_encoder, tmp_path):
    rec = Recognizer(tiny_encoder, gallery=tmp_path / "e", templates="each")
    rec.enroll("x", GlyphSource.samples(11, n=3))
    assert rec.gallery.num_templates == 3
    rec.close()
    with pytest.raises(ConfigError, match="keeps templates='each'"):
        Recognizer(tiny_encoder, gallery=tmp_path / "e", templates="mean")
    assert Recognizer(tiny_encoder, gallery=tmp_path / "e").templates == "each"


def test_enroll_many_takes_meta_like_the_gallery(tmp_path):
    """(label, samples[, meta]) items, as Gallery.enroll_many takes (label, vectors[, meta])."""
    with Recognizer(Encoder(EncoderConfig(dim=16, widths=(8,))), gallery=tmp_path / "g") as r:
        r.enroll_many([("a", GlyphSource.samples(1, n=2), {"site": "x"}), ("b", GlyphSource.samples(2, n=2))])
        assert r.gallery.class_meta("a")["site"] == "x" and "site" not in r.gallery.class_meta("b")
        assert [d.label for d in r.identify(GlyphSource.samples(1, n=1), where={"site": "x"},
                                            threshold=None)] == ["a"]
        with pytest.raises(InvalidInputError, match="expected"):
            r.enroll_many([("c",)])
