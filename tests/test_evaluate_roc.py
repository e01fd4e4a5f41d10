"""ROC curve: the points (cross-checked with scikit-learn), the PNG, and its place in the report."""

import io

import numpy as np
import pytest
from PIL import Image
from sklearn.metrics import roc_curve as sk_roc_curve

from megaclass import GlyphSource, Recognizer
from megaclass.errors import InvalidInputError
from megaclass.evaluate.pipeline import evaluate_recognizer
from megaclass.evaluate.plots import roc_plot, roc_points
from megaclass.evaluate.report import write_report
from megaclass.evaluate.streaming import VerificationStream
from megaclass.evaluate.verification import roc_curve


def _scores(seed: int, n_gen: int = 300, n_imp: int = 2000):
    rng = np.random.default_rng(seed)
    gen = np.clip(rng.normal(0.6, 0.15, n_gen), -1, 1)
    imp = np.clip(rng.normal(0.1, 0.15, n_imp), -1, 1)
    imp[:50] = np.round(imp[:50], 2) + 0.005  # ties between impostor scores (mid-bin: see the stream test)
    return gen, imp


def _sklearn(gen, imp):
    y = np.r_[np.ones(gen.size), np.zeros(imp.size)]
    return sk_roc_curve(y, np.r_[gen, imp], drop_intermediate=False)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_roc_points_match_sklearn_on_exact_scores(seed):
    gen, imp = _scores(seed)
    roc = roc_curve(gen, imp)
    far, tar = roc_points(roc["far"], 1 - roc["tar"])
    fpr, tpr, _ = _sklearn(gen, imp)
    ref = np.array(sorted(set(zip(fpr.tolist(), tpr.tolist(), strict=True))))
    np.testing.assert_allclose(np.c_[far, tar], ref)
    assert (np.diff(far) >= 0).all() and (np.diff(tar) >= 0).all()  # monotone
    assert far[0] == 0 and far[-1] == 1 and tar[-1] == 1


def test_roc_points_from_streamed_histograms_match_sklearn_at_bin_edges():
    gen, imp = _scores(3)
    stream = VerificationStream(bins=200)
    stream.add(gen, imp)
    far, tar = roc_points(stream.impostor.at_least() / imp.size, 1 - stream.genuine.at_least() / gen.size)
    assert (np.diff(far) >= 0).all() and (np.diff(tar) >= 0).all()
    fpr, tpr, thr = _sklearn(gen, imp)
    for k in (100, 110, 120, 130, 140, 150):  # thresholds 0.0, 0.1, ..., 0.5
        edge = stream.impostor.edges[k]
        j = int(np.nonzero(thr >= edge)[0][-1])  # sklearn's lowest threshold >= this edge
        at_edge = (stream.impostor.at_least()[k] / imp.size, stream.genuine.at_least()[k] / gen.size)
        assert at_edge == pytest.approx((fpr[j], tpr[j]))
        assert np.isclose(far, fpr[j]).any() and np.isclose(tar[np.isclose(far, fpr[j])], tpr[j]).any()


def test_roc_points_refuse_bad_rates():
    with pytest.raises(InvalidInputError, match="false negative"):
        roc_points([0.1, 0.2], [0.3])
    with pytest.raises(InvalidInputError, match="finite"):
        roc_points([0.1, np.nan], [0.3, 0.2])
    with pytest.raises(InvalidInputError, match=r"\[0, 1\]"):
        roc_points([0.1, 1.5], [0.3, 0.2])


def test_roc_plot_is_a_png():
    gen, imp = _scores(4)
    roc = roc_curve(gen, imp)
    png = roc_plot({"1:1": (roc["far"], 1 - roc["tar"], imp.size, "impostor pairs")},
                   marks=[(0.01, 0.9, "TAR@FAR 0.01")], eer={"1:1": 0.05})
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(io.BytesIO(png)) as im:
        assert im.format == "PNG" and 300 < im.width < 800 and 300 < im.height < 800
    assert roc_plot({})[:4] == b"\x89PNG"  # nothing to draw still gives an (empty) plot


def test_report_has_roc_next_to_det(tiny_encoder, tmp_path):
    rec = Recognizer(tiny_encoder, tmp_path / "g")
    try:
        ids = np.arange(5000, 5030)
        images, _ = GlyphSource.batch(ids, 3, seed=1)
        rec.enroll_many((f"glyph-{c}", images[3 * k:3 * k + 3]) for k, c in enumerate(ids))
        q, cls = GlyphSource.batch(ids, 2, seed=2)
        nm, _ = GlyphSource.batch(np.arange(6000, 6100), 1, seed=2)
        ev = evaluate_recognizer(rec, q, [f"glyph-{c}" for c in cls], nm)
    finally:
        rec.close()
    page = write_report(tmp_path / "out", ev).read_text()
    assert 'alt="roc plot"' in page and "<figcaption>ROC: true against false accept rate" in page
    assert page.index('alt="det plot"') < page.index('alt="roc plot"') < page.index('alt="cmc plot"')
    png = (tmp_path / "out" / "plots" / "roc.png").read_bytes()
    assert png[:4] == b"\x89PNG"
