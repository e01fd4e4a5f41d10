"""Per-group FNIR/FPIR (evaluate/groups.py) and glyph class attributes: hand-computed cases."""

import math

import numpy as np
import pytest

from megaclass.data.glyph_attributes import GLYPH_ATTRIBUTES, glyph_attributes, glyph_class_meta
from megaclass.data.glyphs import render_glyphs
from megaclass.errors import ConfigError, InvalidInputError
from megaclass.evaluate.groups import UNKNOWN, group_of, group_rates
from megaclass.evaluate.open_set import wilson_interval


def _case():
    # group a: 10 mated searches, 2 wrong at rank 1, 1 right but scored 0.3 -> 3 misses at T=0.5
    # group b: 10 mated searches, 1 miss (wrong rank 1); "unknown": 4 mated, all hits
    mg = ["a"] * 10 + ["b"] * 10 + [UNKNOWN] * 4
    ms = [0.9] * 7 + [0.3] + [0.9, 0.9] + [0.9] * 10 + [0.8] * 4
    mc = [True] * 8 + [False, False] + [True] * 9 + [False] + [True] * 4
    # non-mated: a has 10 searches, 2 score >= 0.5; b has 10, 0 score >= 0.5
    ng = ["a"] * 10 + ["b"] * 10
    ns = [0.6, 0.7] + [0.1] * 8 + [0.2] * 10
    return mg, ms, mc, ng, ns


def test_group_rates_equal_hand_computed_ones():
    mg, ms, mc, ng, ns = _case()
    r = group_rates(mg, ms, mc, ng, ns, key="k", threshold=0.5, fpirs=(), min_expected_errors=1)
    at = r["thresholds"][0]
    assert at["point"] == "gallery threshold" and at["threshold"] == 0.5
    assert at["overall"]["fnir"] == pytest.approx(4 / 24) and at["overall"]["fpir"] == pytest.approx(2 / 20)
    rows = {g["group"]: g for g in at["groups"]}
    assert list(rows) == ["a", "b", UNKNOWN]  # unknown last, counted
    assert rows["a"]["fnir"] == pytest.approx(0.3) and rows["a"]["fnir_errors"] == 3
    assert rows["a"]["fnir_ci95"] == pytest.approx(list(wilson_interval(3, 10)))
    assert rows["b"]["fnir"] == pytest.approx(0.1) and rows["b"]["mated_searches"] == 10
    assert rows["a"]["fpir"] == pytest.approx(0.2) and rows["b"]["fpir"] == 0.0
    assert rows["a"]["fnir_vs_overall"] == pytest.approx(0.3 / (4 / 24))
    # unknown: 4 mated searches < 1 / (4/24) = 6 needed -> too small, not 0 %
    assert rows[UNKNOWN]["fnir"] is None and "too small" in rows[UNKNOWN]["fnir_too_small"]
    assert rows[UNKNOWN]["mated_searches"] == 4
    d = at["differentials"]["fnir"]
    assert d["max_group"] == "a" and d["min_group"] == "b" and d["max_min_ratio"] == pytest.approx(3.0)
    # FPIR: b has no false positive -> the ratio is undefined, with the reason
    assert at["differentials"]["fpir"]["max_min_ratio"] is None
    assert "no errors" in at["differentials"]["fpir"]["reason"]


def test_a_group_smaller_than_the_target_rate_needs_is_too_small_not_zero():
    rng = np.random.default_rng(0)
    # 1000 non-mated searches in group "big", 50 in "small": FPIR 1 % needs 3/0.01 = 300
    ng = ["big"] * 1000 + ["small"] * 50
    ns = rng.random(1050)
    r = group_rates(["big", "small"], [0.99, 0.99], [True, True], ng, ns, key="k", fpirs=(0.01,))
    assert r["skipped"][0]["point"] == "gallery threshold"
    at = r["thresholds"][0]
    assert at["target_fpir"] == 0.01 and at["overall"]["fpir"] <= 0.01
    rows = {g["group"]: g for g in at["groups"]}
    assert rows["big"]["fpir"] is not None
    assert rows["small"]["fpir"] is None and "300" in rows["small"]["fpir_too_small"]
    assert rows["small"]["non_mated_searches"] == 50
    # a target FPIR the non-mated searches cannot resolve is skipped with the reason
    r = group_rates(["big"], [0.9], [True], ["big"] * 50, ns[:50], key="k", fpirs=(0.001,))
    assert r["thresholds"] == [] and "1,000" in r["skipped"][-1]["reason"]


def test_bad_input_is_named():
    with pytest.raises(InvalidInputError, match="mated groups"):
        group_rates(["a"], [0.1, 0.2], [True, True], key="k")
    with pytest.raises(InvalidInputError, match="non-mated groups"):
        group_rates(["a"], [0.1], [True], ["a"], [0.1, 0.2], key="k")


def test_group_of_missing_or_empty_values_are_unknown():
    assert group_of({"k": "x"}, "k") == "x" and group_of({"k": 3}, "k") == "3"
    assert group_of({}, "k") == group_of({"k": ""}, "k") == group_of(None, "k") == UNKNOWN


def test_glyph_attributes_are_deterministic_balanced_and_leave_rendering_alone():
    before = render_glyphs([5, 99], [0, 1], seed=3)
    attrs = glyph_attributes(range(3000))
    assert attrs == glyph_attributes(range(3000))
    assert render_glyphs([5, 99], [0, 1], seed=3).tobytes() == before.tobytes()
    for key in GLYPH_ATTRIBUTES:
        counts = {}
        for a in attrs:
            counts[a[key]] = counts.get(a[key], 0) + 1
        assert len(counts) == 3 and min(counts.values()) > 600, (key, counts)  # 3 groups, none tiny
    assert glyph_class_meta("glyph-12") == attrs[12] and glyph_class_meta("glyph-x") == {}
    assert math.isclose(sum(a["strokes"] == "2" for a in attrs) / 3000, 1 / 3, abs_tol=0.05)


def test_cli_group_by_with_non_mated_files_and_their_meta_csv(tiny_model_dir, tmp_path):
    """evaluate --group-by strokes: mated groups from the glyph classes, non-mated ones from the
    CSV (files matched by name; a file missing from it is 'unknown'); report section written."""
    import json

    from PIL import Image
    from typer.testing import CliRunner

    from megaclass import cli

    cli._register_area_commands()
    run = CliRunner().invoke
    g = tmp_path / "g"
    assert run(cli.app, ["enroll", "-m", str(tiny_model_dir), "-g", str(g), "--from",
                         "glyphs:7000-7030", "--quiet"]).exit_code == 0
    probes = tmp_path / "nm" / "other"
    probes.mkdir(parents=True)
    imgs = render_glyphs(list(range(9000, 9120)), [0] * 120)
    for i, im in enumerate(imgs):
        Image.fromarray((im * 255).astype(np.uint8)).save(probes / f"p{i}.png")
    # the CSV names 100 of the 120 probes: half "x", half "y"; the other 20 are unknown
    rows = ["file,family"] + [f"p{i}.png,{'x' if i % 2 else 'y'}" for i in range(100)]
    (tmp_path / "meta.csv").write_text("\n".join(rows) + "\n")
    base = ["evaluate", "-m", str(tiny_model_dir), "-g", str(g), "-q", "glyphs:7000-7030",
            "--non-mated", str(tmp_path / "nm"), "--target-fpir", "0.1", "--quiet"]
    r = run(cli.app, [*base, "--group-by", "family", "--non-mated-meta", str(tmp_path / "meta.csv"),
                      "--json", "--report", str(tmp_path / "rep")])
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)["groups"]
    counts = {x["group"]: (x["mated_searches"], x["non_mated_searches"]) for x in out["groups"]}
    # glyph classes have no 'family': all 30 mated searches are unknown, counted
    assert counts == {"x": (0, 50), "y": (0, 50), "unknown": (30, 20)}
    at = out["thresholds"][0]
    assert at["point"] == "FPIR 0.1" and at["overall"]["non_mated_searches"] == 120
    # 20 or 50 non-mated searches are fewer than 3 / 0.1 = 30 / enough: x and y have a rate
    rows = {x["group"]: x for x in at["groups"]}
    assert rows["unknown"]["fpir"] is None and "too small" in rows["unknown"]["fpir_too_small"]
    assert rows["x"]["fpir"] == pytest.approx(rows["x"]["fpir_errors"] / 50)
    page = (tmp_path / "rep" / "report.html").read_text()
    assert "Error rates per group of <code>family</code>" in page
    assert (tmp_path / "rep" / "plots" / "groups.png").stat().st_size > 1000
    # the glyph attribute as key: mated groups are the true classes' stroke counts
    r = run(cli.app, [*base, "--group-by", "strokes", "--json"])
    out = json.loads(r.stdout)["groups"]
    want = {}
    for a in glyph_attributes(range(7000, 7030)):
        want[a["strokes"]] = want.get(a["strokes"], 0) + 1
    assert {x["group"]: x["mated_searches"] for x in out["groups"] if x["mated_searches"]} == want
    # bad input: a CSV without the header, --non-mated-meta without --group-by
    (tmp_path / "bad.csv").write_text("p1.png,x\n")
    r = run(cli.app, [*base, "--group-by", "family", "--non-mated-meta", str(tmp_path / "bad.csv")])
    assert isinstance(r.exception, InvalidInputError) and "header 'file'" in str(r.exception)
    r = run(cli.app, [*base, "--non-mated-meta", str(tmp_path / "meta.csv")])
    assert isinstance(r.exception, ConfigError) and "needs --group-by" in str(r.exception)
