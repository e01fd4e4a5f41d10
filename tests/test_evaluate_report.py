"""End to end: a real recognizer, every metric, the HTML report, the CLI, bad input."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from megaclass import GlyphSource, Recognizer
from megaclass.errors import InvalidInputError, UnknownLabelError
from megaclass.evaluate.pipeline import evaluate_recognizer
from megaclass.evaluate.report import write_report
from megaclass.evaluate.scaling import gallery_size_curve, glyph_distractors

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def enrolled(tiny_encoder, tmp_path_factory):
    rec = Recognizer(tiny_encoder, tmp_path_factory.mktemp("eval") / "g")
    images, _ = GlyphSource.batch(np.arange(5000, 5060), 3, seed=1)
    rec.enroll_many((f"glyph-{c}", images[3 * k:3 * k + 3]) for k, c in enumerate(range(5000, 5060)))
    q, cls = GlyphSource.batch(np.arange(5000, 5060), 2, seed=2)
    nm, _ = GlyphSource.batch(np.arange(6000, 6150), 1, seed=2)
    yield rec, q, [f"glyph-{c}" for c in cls], nm
    rec.close()


def test_every_metric_family_and_report(enrolled, tmp_path):
    rec, q, truth, nm = enrolled
    ev = evaluate_recognizer(rec, q, truth, nm)
    m = ev.metrics
    cs = m["closed_set"]
    assert 0 <= cs["top_k"]["top1"] <= cs["top_k"]["top5"] <= cs["top_k"]["top10"] <= 1
    assert cs["micro"]["f1"] == pytest.approx(cs["top_k"]["top1"])  # single-label: micro = accuracy
    fa = {r["target_fpir"]: r for r in m["open_set"]["fnir_at_fpir"]}
    assert fa[0.1]["fnir"] is not None and fa[0.1]["fpir"] <= 0.1
    assert fa[0.001]["fnir"] is None and "1,000 non-mated" in fa[0.001]["reason"]
    vf = {r["far"]: r for r in m["verification"]["tar_at_far"]}
    assert vf[1e-2]["tar"] is not None and vf[1e-6]["tar"] is None
    assert m["verification"]["genuine_pairs"] == len(truth)
    assert m["verification"]["impostor_pairs"] == len(truth) * 59 + len(nm) * 60
    scaling = gallery_size_curve(rec, rec.embed(q), truth, rec.embed(nm),
                                 glyph_distractors(20_000_000, per_class=2), sizes=(30, 60, 200),
                                 target_fpir=0.1)
    pts = scaling["points"]
    assert pts[0]["top1"] is None and "smaller" in pts[0]["reason"]
    assert [p["gallery_size"] for p in pts[1:]] == [60, 200]
    assert pts[1]["top1"] == pytest.approx(cs["top_k"]["top1"])
    assert pts[2]["top1"] <= pts[1]["top1"]
    assert len(rec.gallery) == 60  # the user's gallery is left as it was
    html = write_report(tmp_path, ev, images=q, labels=truth, scaling=scaling).read_text()
    assert html.count("data:image/png;base64,") >= 5
    assert "http://" not in html and "https://" not in html and "<script" not in html
    assert "undefined" in html
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["gallery_size"]["points"][2]["gallery_size"] == 200


def test_bad_input_is_refused(enrolled):
    rec, q, truth, nm = enrolled
    with pytest.raises(UnknownLabelError, match="not enrolled"):
        evaluate_recognizer(rec, q[:2], ["glyph-5000", "nobody"])
    with pytest.raises(InvalidInputError, match="labels"):
        evaluate_recognizer(rec, q[:3], truth[:2])
    with pytest.raises(InvalidInputError, match="at least one"):
        evaluate_recognizer(rec, q[:0], [])
    ev = evaluate_recognizer(rec, q[:10], truth[:10])  # no non-mated: FPIR undefined, not 0
    assert all(r["fnir"] is None and "no non-mated" in r["reason"]
               for r in ev.metrics["open_set"]["fnir_at_fpir"])


def test_cli_writes_report(tiny_model_dir, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}

    def run(*args):
        return subprocess.run([sys.executable, "-m", "megaclass.cli", *map(str, args)],
                              capture_output=True, text=True, env=env, timeout=300)

    g = tmp_path / "g"
    assert run("enroll", "-m", tiny_model_dir, "-g", g, "--from", "glyphs:7000-7040").returncode == 0
    p = run("evaluate", "-m", tiny_model_dir, "-g", g, "--queries", "glyphs:7000-7040",
            "--non-mated", "glyphs:9000-9200", "--report", tmp_path / "out", "--gallery-sizes", "40,100",
            "--json")
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout)
    assert out["mated_searches"] == 40 and out["open_set"][0]["target_fpir"] == 0.01
    assert [x["gallery_size"] for x in out["gallery_size"]["points"]] == [40, 100]
    assert (tmp_path / "out" / "report.html").is_file()
    assert json.loads((tmp_path / "out" / "metrics.json").read_text())["closed_set"]["queries"] == 40
    bad = run("evaluate", "-m", tiny_model_dir, "-g", g, "--queries", "glyphs:8000-8005")
    assert bad.returncode == 2 and "not enrolled" in (bad.stdout + bad.stderr)
