"""FusedRecognizer (fusion.py): one member equals that member, fused calibration holds on
held-out non-mated searches, members of different dimensions, a wrong set of models refused."""

import numpy as np
import pytest
import torch

from megaclass import GlyphSource
from megaclass.errors import ConfigError
from megaclass.evaluate.open_set import wilson_interval
from megaclass.fusion import FusedRecognizer
from megaclass.models.encoder import Encoder, EncoderConfig
from megaclass.recognizer import Recognizer


def _enroll_all(ens, ids, n=3):
    for c in ids:
        ens.enroll(f"glyph-{c}", GlyphSource.samples(c, n, seed=1))


def _other_encoder():
    torch.manual_seed(7)  # an untrained CNN of another dimension: a weak but real encoder
    return Encoder(EncoderConfig(dim=16, widths=(8, 16))).eval()


@pytest.fixture(scope="module")
def probes():
    q, ids = GlyphSource.batch(list(range(0, 40)), 1, seed=5)
    nm, _ = GlyphSource.batch(list(range(5000, 7400)), 1, seed=5)  # never enrolled
    return q, [f"glyph-{i}" for i in ids], nm


def test_one_member_fusion_equals_that_member(tiny_encoder, tmp_path, probes):
    q, truth, nm = probes
    rec = Recognizer(tiny_encoder, tmp_path / "a")
    ens = FusedRecognizer([rec])
    _enroll_all(ens, range(40))
    ens.calibrate(nm[:1000], target_fpir=0.05)
    single = rec.calibrate(nm[:1000], target_fpir=0.05, save=False, allow_few=True)
    fused = ens.identify(q, k=5)
    alone = rec.identify(q, k=5, threshold=single.threshold)
    assert [[c.label for c in d.candidates] for d in fused] == \
        [[c.label for c in d.candidates] for d in alone]
    assert [d.label for d in fused] == [d.label for d in alone]  # same accept / reject decisions
    # the fused score is the member's z-score
    st = ens.stats_[0]
    assert fused[0].score == pytest.approx((alone[0].score - st["mean"]) / st["std"], rel=1e-5)


def test_fused_calibration_holds_on_held_out_non_mated_searches(tiny_encoder, tmp_path, probes):
    _, _, nm = probes
    ens = FusedRecognizer([Recognizer(tiny_encoder, tmp_path / "a"),
                           Recognizer(_other_encoder(), tmp_path / "b")], weights=[2, 1])
    _enroll_all(ens, range(40))
    cal = ens.calibrate(nm[:1200], target_fpir=0.05)
    assert cal.achieved_fpir <= 0.05
    held = nm[1200:]
    fp = sum(d.known for d in ens.identify(held, k=1))
    lo, hi = wilson_interval(fp, len(held))
    assert lo <= 0.05 <= hi, (fp, len(held))
    # the state lives in both galleries: a new ensemble on them decides the same
    again = FusedRecognizer([Recognizer(tiny_encoder, tmp_path / "a"),
                             Recognizer(_other_encoder(), tmp_path / "b")], weights=[2, 1])
    assert again.threshold == ens.threshold and again.stats_ == ens.stats_


def test_bad_ensembles_are_refused_with_the_reason(tiny_encoder, tmp_path):
    ens = FusedRecognizer([Recognizer(tiny_encoder, tmp_path / "a"),
                           Recognizer(_other_encoder(), tmp_path / "b")])
    _enroll_all(ens, range(3), n=1)
    assert ens.members[0].gallery.dim == 32 and ens.members[1].gallery.dim == 16
    with pytest.raises(ConfigError, match="ensemble of 2 models"):
        FusedRecognizer([Recognizer(tiny_encoder, tmp_path / "a")])
    with pytest.raises(ConfigError, match="fusion rule"):
        FusedRecognizer([Recognizer(tiny_encoder, tmp_path / "c")], rule="max")
    with pytest.raises(ConfigError, match="its own gallery"):
        FusedRecognizer([Recognizer(tiny_encoder, tmp_path / "d"), Recognizer(tiny_encoder, tmp_path / "d")])
    # an enroll that fails in the second member leaves the class in neither
    with pytest.raises(Exception):  # noqa: B017 - whatever the member raises, nothing half-enrolled
        ens.enroll("bad", np.zeros((1, 1, 3, 3), np.float32) + np.nan)
    assert "bad" not in ens.members[0].gallery and "bad" not in ens.members[1].gallery
    borda = FusedRecognizer(ens.members, rule="borda")
    top = borda.identify(GlyphSource.samples(1, 1, seed=9), k=3, threshold=None)[0]
    assert len(top.candidates) == 3


def test_adopting_galleries_needs_the_same_classes(tiny_encoder, tmp_path):
    a, b = Recognizer(tiny_encoder, tmp_path / "a"), Recognizer(_other_encoder(), tmp_path / "b")
    for r, ids in ((a, (1, 2)), (b, (1, 3))):  # enrolled on their own, one class apart
        for c in ids:
            r.enroll(f"glyph-{c}", GlyphSource.samples(c, 1, seed=1))
    with pytest.raises(ConfigError, match="enrolled outside this ensemble"):
        FusedRecognizer([a, b])
    with pytest.raises(ConfigError, match="disagree.*glyph-2"):
        FusedRecognizer([a, b], adopt=True)
    b.erase("glyph-3")
    b.enroll("glyph-2", GlyphSource.samples(2, 1, seed=1))
    ens = FusedRecognizer([a, b], adopt=True)
    assert ens.stats_ is None and len(ens) == 2  # usable once calibrated


def test_parse_fusion_grammar_and_its_errors():
    from megaclass.fusion import fusion_spec, parse_fusion

    assert parse_fusion("zsum", 2) == ("zsum", None)
    assert parse_fusion(" MinMax:2,1 ", 2) == ("minmax", [2.0, 1.0])
    assert parse_fusion("borda:1,0,3", 3) == ("borda", [1.0, 0.0, 3.0])
    assert fusion_spec("zsum", [1.0, 1.0]) == "zsum" and fusion_spec("zsum", [2.0, 1.0]) == "zsum:2,1"
    for spec, says in (("max", "unknown fusion rule 'max'.*zsum, minmax, borda"),
                       ("zsum:1", "1 weight\\(s\\) for 2 models"),
                       ("zsum:a,b", "numbers separated by commas"),
                       ("zsum:0,0", "not all 0"), ("zsum:-1,2", "non-negative"),
                       ("zsum:inf,1", "finite")):
        with pytest.raises(ConfigError, match=says):
            parse_fusion(spec, 2)


def test_rule_and_weights_are_stored_and_used_on_reopen(tiny_encoder, tmp_path, probes):
    """The rule and weights are saved with the statistics and threshold: an ensemble reopened
    without a rule fuses (and decides) as calibrated; another rule is uncalibrated until
    calibrate, which stores it."""
    from megaclass.errors import NotCalibratedError

    _, _, nm = probes
    q = GlyphSource.samples(3, 2, seed=9)

    def reopen(**kw):
        return Recognizer([tiny_encoder, _other_encoder()], gallery=tmp_path / "g", **kw)

    ens = reopen(rule="minmax", weights=[2, 1])
    _enroll_all(ens, range(20), n=1)
    assert ens.stored_fusion() == "minmax:2,1"  # stored at the first enroll, before calibration
    ens.calibrate(nm[:1000], target_fpir=0.05)
    before = ens.identify(q, k=3)
    ens.close()
    again = reopen()  # no rule given: the stored one
    assert (again.rule, again.weights.tolist(), again.fusion) == ("minmax", [2.0, 1.0], "minmax:2,1")
    assert again.threshold == ens.threshold
    assert [(d.label, d.score) for d in again.identify(q, k=3)] == [(d.label, d.score) for d in before]
    assert again.gallery.stats()["ensemble"]["rule"] == "minmax"
    again.close()
    other = reopen(rule="zsum")  # another rule: its statistics and threshold are not those
    assert other.threshold is None and other.stats_ is None
    with pytest.raises(ConfigError, match="stored rule --fusion minmax:2,1, not zsum"):
        other.check_stored_fusion()
    with pytest.raises(NotCalibratedError):
        other.identify(q)
    other.calibrate(nm[:1000], target_fpir=0.05)  # calibrating stores the new rule
    other.close()
    with reopen() as last:
        assert last.fusion == "zsum" and last.threshold == other.threshold
        last.check_stored_fusion()
    with pytest.raises(ConfigError, match="weights must be 2"):
        reopen(weights=[1, 2, 3])
