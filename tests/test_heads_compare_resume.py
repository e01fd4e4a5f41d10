"""A resumed head comparison keeps finished runs and tries failed ones again."""

from __future__ import annotations

import json

from megaclass.bench.heads_compare import run_head_comparison

SETTINGS = {"partial_fc": {"optimizer": "sgd", "lr": 0.03, "head_options": {}}}


def test_resume_retries_a_timed_out_run_and_keeps_a_finished_one(tmp_path):
    first = run_head_comparison(tmp_path, sizes=(200,), heads=("partial_fc",), quick=True,
                                settings=SETTINGS, log=None)
    done = [r for r in first["runs"] if r["classes"] == 200]
    assert len(done) == 1 and "error" not in done[0] and done[0]["test_top1"] > 0.5
    report = json.loads((tmp_path / "head_comparison.json").read_text())
    report["runs"].append({"classes": 300, "head": "partial_fc", "settings": SETTINGS["partial_fc"],
                           "error": "timed out after 3600 s"})
    (tmp_path / "head_comparison.json").write_text(json.dumps(report))
    again = run_head_comparison(tmp_path, sizes=(200, 300), heads=("partial_fc",), quick=True,
                                settings=SETTINGS, log=None)
    by_size = {r["classes"]: r for r in again["runs"]}
    assert len(again["runs"]) == 2                            # the failed try is replaced, not added to
    assert by_size[200] == done[0]                             # kept as it was, not trained again
    assert "error" not in by_size[300] and by_size[300]["test_top1"] > 0.5


def test_a_budget_override_stops_the_run_by_the_budget_and_is_recorded(tmp_path):
    report = run_head_comparison(tmp_path, sizes=(200,), heads=("partial_fc",), quick=True,
                                 settings=SETTINGS, max_seconds=1e-3, log=None)
    run, = report["runs"]
    assert report["config"]["max_seconds"] == 1e-3
    assert run["stopped_by"] == "max_seconds" and run["steps"] < 60  # quick's step cap is 60


def test_the_class_mean_baseline_scores_the_heads_test_drawings(tmp_path):
    """The gallery's answer (no head trained) sits in the report beside the heads, on the
    same test drawings, and is a real classifier (far above chance on 200 classes)."""
    from megaclass.bench.heads_accuracy import class_mean_baseline

    report = run_head_comparison(tmp_path, sizes=(200,), heads=("partial_fc",), quick=True,
                                 settings=SETTINGS, log=None)
    base, = report["class_mean"]
    assert base["classes"] == 200 and base["test_samples"] == report["runs"][0]["test_samples"]
    assert 0.5 < base["test_top1"] <= base["test_top5"] <= 1.0
    again = class_mean_baseline(tmp_path / "features", 200, base["test_samples"])
    assert again["test_top1"] == base["test_top1"]  # deterministic: same rows, same templates
