"""The cohort decision rule: calibrated, stored and applied the same way everywhere."""

from __future__ import annotations

import numpy as np
import pytest

from megaclass.decisions import AUTO_COHORT_AT, DecisionRule
from megaclass.errors import ConfigError
from megaclass.evaluate.pipeline import evaluate_recognizer
from megaclass.gallery import Gallery
from megaclass.recognizer import Recognizer

D = 32


def _unit(x):
    x = np.asarray(x, dtype=np.float32)
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _world(seed: int = 0):
    """Classes in two kinds of places: 10 crowded neighbourhoods of 12 classes each (cosine
    ~0.6 among neighbours) and 120 classes spread out alone. Mated probes come from the lone
    classes (moderately noisy), non-mated probes from new classes in the crowded
    neighbourhoods: their best score is high, but so are their runners-up'."""
    rng = np.random.default_rng(seed)
    hubs = _unit(rng.normal(size=(10, D)))
    crowded = _unit(np.repeat(hubs, 12, 0) + 0.8 * _unit(rng.normal(size=(120, D))))
    lone = _unit(rng.normal(size=(120, D)))
    classes = np.concatenate([crowded, lone])

    def near(centres, spread, n):
        return _unit(np.repeat(centres, n, 0) + spread * _unit(rng.normal(size=(len(centres) * n, D))))

    mated = near(lone, 0.8, 2)
    truth = [f"c{120 + i}" for i in range(120) for _ in range(2)]
    newcomers = _unit(np.repeat(hubs, 60, 0) + 0.8 * _unit(rng.normal(size=(600, D))))
    return classes, mated, truth, newcomers[0::2], newcomers[1::2]


@pytest.fixture()
def rec(tiny_encoder, tmp_path):
    classes, *_ = _world()
    g = Gallery.open(tmp_path / "g", dim=D, index="Flat")
    r = Recognizer(tiny_encoder, g)
    g.enroll_many([(f"c{i}", v[None]) for i, v in enumerate(classes)])
    yield r
    r.close()


def _brute(classes, q, n):
    s = np.sort(classes @ q)[::-1]
    return s[0] - s[1:1 + n].mean()


def test_cohort_rule_is_stored_with_the_threshold_and_applied_on_reopen(rec, tiny_encoder, tmp_path):
    classes, mated, _, calib, _ = _world()
    cal = rec.calibrate_vectors(calib, 0.1, decision="cohort:5", allow_few=True)
    assert rec.gallery.get_setting("decision") == "cohort:5"
    assert rec.gallery.get_setting("calibration")["decision"] == "cohort:5"
    rec.gallery.save()
    again = Recognizer(tiny_encoder, rec.gallery)
    assert again.decision == DecisionRule(5) and again.threshold == pytest.approx(cal.threshold)
    for d, q in zip(again.identify_vectors(mated[:20], k=3), mated[:20], strict=True):
        assert len(d.candidates) == 3  # k as asked, although the search went 6 deep
        assert d.statistic == pytest.approx(_brute(classes, q, 5), abs=1e-5)
        assert d.known == (d.statistic >= cal.threshold)
        assert d.score == pytest.approx(float(np.max(classes @ q)), abs=1e-5)  # the score stays the cosine


def test_cohort_rule_lowers_fnir_where_the_raw_score_cannot_see_crowding(rec):
    _, mated, truth, calib, held = _world()
    rates = {}
    for rule in ("score", "cohort:10"):
        cal = rec.calibrate_vectors(calib, 0.05, decision=rule, allow_few=True)
        ev = evaluate_recognizer(rec, mated, truth, held, fpirs=(0.05,))
        assert ev.metrics["open_set"]["decision"] == rule
        at = ev.metrics["open_set"]["at_gallery_threshold"]
        assert at["fpir"] <= 0.12  # held-out FPIR near the 5 % target, whichever the rule
        rates[rule] = at["fnir"]
        assert cal.threshold == pytest.approx(rec.threshold)
    # the crowded newcomers score high but so do their neighbours: the raw score must set its
    # threshold above them and loses the lone classes' noisy probes; the cohort rule does not
    assert rates["score"] > 0.2 and rates["cohort:10"] < 0.5 * rates["score"], rates


def test_evaluate_with_another_rule_than_the_calibrated_one_reports_no_gallery_threshold_rates(rec):
    _, mated, truth, calib, held = _world()
    rec.calibrate_vectors(calib, 0.05, allow_few=True)  # score
    ev = evaluate_recognizer(rec, mated, truth, held, fpirs=(0.05,), decision="cohort:10")
    assert ev.metrics["open_set"]["decision"] == "cohort:10"
    assert "at_gallery_threshold" not in ev.metrics["open_set"]
    assert ev.metrics["open_set"]["fnir_at_fpir"][0]["fnir"] is not None


def test_verify_under_the_cohort_rule_uses_the_claimed_class_against_its_rivals(tiny_encoder, tmp_path):
    import torch

    from megaclass.data.glyphs import GlyphSource

    g = Gallery.open(tmp_path / "g", dim=tiny_encoder.dim, index="Flat")
    rec = Recognizer(tiny_encoder, g)
    rec.enroll_many((f"glyph-{c}", GlyphSource.samples(c, n=3, seed=1)) for c in range(200, 240))
    rec.calibrate(torch.cat([GlyphSource.samples(c, n=2, seed=2) for c in range(300, 350)]), 0.1,
                  decision="cohort:4", allow_few=True)
    probe = GlyphSource.samples(205, n=1, seed=3)
    verdict = rec.verify(probe, "glyph-205")
    q = rec.embed(probe)[0]
    scores = {lb: float(np.max(g.templates(lb) @ q)) for lb in g.labels()}
    rivals = sorted((s for lb, s in scores.items() if lb != "glyph-205"), reverse=True)[:4]
    assert verdict.score == pytest.approx(scores["glyph-205"], abs=1e-5)
    assert verdict.statistic == pytest.approx(scores["glyph-205"] - np.mean(rivals), abs=1e-5)
    assert verdict.accepted == (verdict.statistic >= rec.threshold)
    rec.close()


def test_bad_rules_are_refused_before_anything_is_written(rec):
    _, _, _, calib, _ = _world()
    for bad in ("cohort:0", "cohort:x", "tnorm", "cohort:1001"):
        with pytest.raises(ConfigError, match="decision rule"):
            rec.calibrate_vectors(calib, 0.1, decision=bad, allow_few=True)
    with pytest.raises(ConfigError, match="needs more than 500 enrolled classes"):
        rec.calibrate_vectors(calib, 0.1, decision="cohort:500", allow_few=True)
    assert rec.gallery.get_setting("threshold") is None and rec.gallery.get_setting("decision") is None


def test_cli_calibrate_decision_is_stored_shown_and_bad_rules_exit_2(tiny_model_dir, tmp_path):
    import json

    from _cli_helpers import run

    g = tmp_path / "g"
    run("enroll", "-m", tiny_model_dir, "-g", g, "--from", "glyphs:7000-7040", "--per-class", "3")
    bad = run("calibrate", "-m", tiny_model_dir, "-g", g, "--non-mated", "glyphs:8000-8100",
              "--decision", "tnorm", check=False)
    assert bad.returncode == 2 and "decision rule" in bad.stderr
    assert json.loads(run("stats", "-g", g, "--json").stdout)["threshold"] is None  # nothing written
    cal = json.loads(run("calibrate", "-m", tiny_model_dir, "-g", g, "--non-mated", "glyphs:8000-8100",
                         "--target-fpir", "0.05", "--decision", "cohort:8", "--json").stdout)
    assert cal["decision"] == "cohort:8" and cal["achieved_fpir"] <= 0.05
    st = json.loads(run("stats", "-g", g, "--json").stdout)
    assert st["decision"] == "cohort:8" and st["threshold"] == pytest.approx(cal["threshold"])
    ev = json.loads(run("evaluate", "-m", tiny_model_dir, "-g", g, "--mated", "glyphs:7000-7040",
                        "--non-mated", "glyphs:9000-9100", "--json").stdout)
    assert ev["identification"]["decision"] == "cohort:8"
    assert "at_gallery_threshold" in ev["identification"]


def test_service_calibrates_with_a_rule_and_answers_with_its_statistic(tiny_encoder, tmp_path):
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from _serve_helpers import files, glyph_pngs
    from megaclass.serve import Limits, create_app

    app = create_app(tiny_encoder, tmp_path / "g", limits=Limits(max_images=64))
    svc = app.state.service
    admin = {"Authorization": f"Bearer {svc.keys.add('t-admin', 'admin')[1]}"}
    with TestClient(app) as client:
        for c in range(600, 612):
            assert client.post("/v1/classes", headers=admin, data={"label": f"c{c}"},
                               files=files(glyph_pngs(c, 3))).status_code == 201
        non_mated = [p for c in range(700, 720) for p in glyph_pngs(c, 2, seed=1)]
        bad = client.post("/v1/calibrate", headers=admin, files=files(non_mated),
                          data={"allow_few": "true", "decision": "cohort:-1"})
        assert bad.status_code == 422 and "decision rule" in bad.text
        assert svc.recognizer.gallery.get_setting("threshold") is None
        r = client.post("/v1/calibrate", headers=admin, files=files(non_mated),
                        data={"allow_few": "true", "target_fpir": "0.1", "decision": "cohort:4"})
        assert r.status_code == 200, r.text
        assert r.json()["decision"] == "cohort:4"
        assert client.get("/v1/stats", headers=admin).json()["decision"] == "cohort:4"  # the console reads it
        r = client.post("/v1/identify", headers=admin, files=files(glyph_pngs(605, 2, seed=7)))
        for d in r.json()["results"]:
            assert d["known"] == (d["statistic"] >= r.json()["threshold"])
        v = client.post("/v1/verify", headers=admin, data={"label": "c605"},
                        files=files(glyph_pngs(605, 1, seed=7), "file")).json()
        assert v["accepted"] == (v["statistic"] >= v["threshold"])


@pytest.mark.parametrize("classes, expected", [(AUTO_COHORT_AT - 1, "score"), (AUTO_COHORT_AT, "cohort:20")])
def test_a_calibration_given_no_rule_picks_it_by_gallery_size_and_a_chosen_rule_sticks(
        tiny_encoder, tmp_path, classes, expected):
    rng = np.random.default_rng(1)
    g = Gallery.open(tmp_path / "g", dim=D, index="Flat")
    g.enroll_many([(f"c{i}", v[None]) for i, v in enumerate(_unit(rng.normal(size=(classes, D))))])
    non_mated = _unit(rng.normal(size=(300, D)))
    with Recognizer(tiny_encoder, g) as r:
        assert r.decision.spec == "score"  # uncalibrated: a threshold the caller gives is a score
        cal = r.calibrate_vectors(non_mated, 0.1, allow_few=True)
        assert r.decision.spec == expected == g.get_setting("decision")
        assert g.get_setting("calibration")["decision_chosen"] is False
        # the stored threshold is the picked rule's: identify accepts exactly the probes whose
        # statistic under that rule reaches it
        stats = r.decision.statistics_of(g.search(non_mated, k=r.decision.candidates))
        accepted = [d.known for d in r.identify_vectors(non_mated, k=1)]
        assert accepted == list(stats >= cal.threshold)
        r.calibrate_vectors(non_mated, 0.1, allow_few=True, decision="cohort:5")
    with Recognizer(tiny_encoder, Gallery.open(tmp_path / "g")) as r:  # a chosen rule is kept
        r.calibrate_vectors(non_mated, 0.1, allow_few=True)
        assert r.decision.spec == "cohort:5"
        assert r.gallery.get_setting("calibration")["decision_chosen"] is True


def test_calibration_reuses_search_results_that_are_deep_enough_and_searches_again_otherwise(rec):
    """``calibrate_vectors(found=)`` (the protocol passes the searches it already made):
    the same calibration as searching itself when the rows hold the rule's candidates;
    rows too shallow for the rule are not trusted (the vectors are searched again)."""
    _, _, _, calib, _ = _world()
    own = rec.calibrate_vectors(calib, 0.1, decision="cohort:5", allow_few=True, save=False)
    deep = rec.gallery.search(calib, k=21)
    reused = rec.calibrate_vectors(calib, 0.1, decision="cohort:5", allow_few=True, save=False, found=deep)
    assert reused.threshold == own.threshold and reused.to_dict() == own.to_dict()
    # one match per row holds no cohort for the rule: searched again, not used
    shallow = rec.gallery.search(calib, k=1)
    again = rec.calibrate_vectors(calib, 0.1, decision="cohort:5", allow_few=True, save=False, found=shallow)
    assert again.to_dict() == own.to_dict()
