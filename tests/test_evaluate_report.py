"""End to end: a real recognizer, every metric, the HTML report, the CLI, bad input."""

import base64
import io
import json
import os
import re
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

from megaclass import GlyphSource, Recognizer
from megaclass.data.glyphs import render_glyphs
from megaclass.errors import InvalidInputError, UnknownLabelError
from megaclass.evaluate.baseline import pixel_baseline, pixel_summary, pixel_templates
from megaclass.evaluate.originals import class_sample_finder, glyph_sources
from megaclass.evaluate.pipeline import evaluate_recognizer
from megaclass.evaluate.report import render_html, write_report
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
            "--baseline", "pixels", "--gallery-samples", "glyphs:7000-7040", "--json")
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout)
    # the baseline enrolled the gallery's samples (enroll --from's drawings) and sits beside the model
    assert out["baseline"]["name"] == "raw pixels" and out["baseline"]["closed_set"]["queries"] == 40
    assert out["baseline"]["gallery"]["classes"] == 40 and out["baseline"]["notes"] == []
    page = _parse((tmp_path / "out" / "report.html").read_text())
    assert "TAR (baseline: raw pixels)" in [c["text"] for c in _table(page, "far")[0]]
    worst = _table(page, "worst")  # non-mated glyphs named by id, drawn at 96 px
    assert all(re.fullmatch(r"glyph 9\d{3} #0", r[3]["text"]) and _size(r[3]["imgs"][0]) == (96, 96)
               for r in worst[1:])
    assert out["mated_searches"] == 40 and out["open_set"][0]["target_fpir"] == 0.01
    assert [x["gallery_size"] for x in out["gallery_size"]["points"]] == [40, 100]
    # the wrong answers at the largest size, as image pairs (query, the class it was taken for)
    conf, last = out["gallery_size"]["confusions"], out["gallery_size"]["points"][-1]
    assert conf and len(conf) == min(24, last["wrong"]) and last["wrong"] >= last["wrong_to_distractors"]
    assert [c["score"] for c in conf] == sorted((c["score"] for c in conf), reverse=True)
    rows = _table(page, "scaling-confusions")[1:]
    assert len(rows) == len(conf) and all(len(r[0]["imgs"]) == 1 and len(r[2]["imgs"]) == 1 for r in rows)
    assert all(r[3]["text"] == ("distractor" if c["distractor"] else "enrolled")
               for r, c in zip(rows, conf, strict=True))
    assert (tmp_path / "out" / "report.html").is_file()
    assert json.loads((tmp_path / "out" / "metrics.json").read_text())["closed_set"]["queries"] == 40
    bad = run("evaluate", "-m", tiny_model_dir, "-g", g, "--queries", "glyphs:8000-8005")
    assert bad.returncode == 2 and "not enrolled" in (bad.stdout + bad.stderr)
    bad = run("evaluate", "-m", tiny_model_dir, "-g", g, "-q", "glyphs:7000-7005", "--baseline", "pixels")
    assert bad.returncode == 2 and "--baseline needs --gallery-samples" in (bad.stdout + bad.stderr)


# -- the report read as a user would (issue 12 part 7) ---------------------------------------

class _Page(HTMLParser):
    """Figures with their captions, tables as rows of (text, images) cells, and every image."""

    def __init__(self):
        super().__init__()
        self.figures, self.tables, self.undef = [], [], []
        self._fig = self._cell = None
        self._cap = False
        self._span = False

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "figure":
            self._fig = {"imgs": 0, "caption": "", "img_before_caption": False}
        elif tag == "figcaption" and self._fig is not None:
            self._cap = True
            self._fig["img_before_caption"] = self._fig["imgs"] == 1
        elif tag == "table":
            self.tables.append({"cls": a.get("class", ""), "rows": []})
        elif tag == "tr" and self.tables:
            self.tables[-1]["rows"].append([])
        elif tag in ("td", "th") and self.tables:
            self._cell = {"text": "", "imgs": []}
            self.tables[-1]["rows"][-1].append(self._cell)
        elif tag == "img":
            if self._fig is not None:
                self._fig["imgs"] += 1
            if self._cell is not None:
                self._cell["imgs"].append(a["src"])
        elif tag == "span" and a.get("class") == "undef-precision":
            self._span = True

    def handle_endtag(self, tag):
        if tag == "figure":
            self.figures.append(self._fig)
            self._fig = None
        elif tag == "figcaption":
            self._cap = False
        elif tag in ("td", "th"):
            self._cell = None
        elif tag == "span":
            self._span = False

    def handle_data(self, data):
        if self._cap:
            self._fig["caption"] += data
        if self._cell is not None:
            self._cell["text"] += data
        if self._span:
            self.undef.append(data)


def _parse(page: str) -> _Page:
    p = _Page()
    p.feed(page)
    return p


def _table(p: _Page, cls: str) -> list[list[dict]]:
    return next(t["rows"] for t in p.tables if t["cls"] == cls)


def _size(src: str) -> tuple[int, int]:
    from PIL import Image

    return Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1]))).size


@pytest.fixture(scope="module")
def swapped(enrolled):
    """Queries where glyph-5003 is asked with drawings of 5002: a sure confusion, and a class
    (glyph-5003) that is queried but never predicted, so its precision is undefined."""
    rec, q, truth, nm = enrolled
    truth = list(truth)
    keep = [i for i, t in enumerate(truth) if t != "glyph-5003"]
    q, truth = q[keep], [truth[i] for i in keep]
    truth = ["glyph-5003" if t == "glyph-5002" else t for t in truth]
    src = [s for s in glyph_sources(range(5000, 5060), 2, seed=2) if s.class_id != 5003]
    return rec, q, truth, nm, src


def test_report_captions_baseline_ascending_rows_and_one_undefined_count(swapped):
    rec, q, truth, nm, src = swapped
    fpirs = (0.1, 0.01, 0.05)  # given out of order
    ev = evaluate_recognizer(rec, q, truth, nm, fpirs=fpirs)
    images, cls = GlyphSource.batch(np.arange(5000, 5060), 3, seed=1)
    base = evaluate_recognizer(pixel_baseline(images, [f"glyph-{c}" for c in cls]), q, truth, nm,
                               fpirs=fpirs)
    pngs: dict = {}
    page = render_html(ev, images=q, labels=truth, baseline=base, baseline_name="raw pixels",
                       sources=src, non_mated_sources=glyph_sources(range(6000, 6150), 1, seed=2),
                       pngs=pngs)
    p = _parse(page)
    # a caption under every plot (the image first, then a sentence), CMC / scores / F1 included
    assert len(p.figures) == len(pngs) == 5
    for f, name in zip(p.figures, pngs, strict=True):
        assert f["imgs"] == 1 and f["img_before_caption"], name
        assert len(f["caption"].split()) >= 15 and f["caption"].rstrip().endswith("."), name
    caps = {name: f["caption"] for f, name in zip(p.figures, pngs, strict=True)}
    assert caps["cmc"].startswith("CMC") and "true class is among the k" in caps["cmc"]
    assert caps["scores"].startswith("Score distributions") and "threshold" in caps["scores"]
    assert caps["f1"].startswith("Per-class F1")
    assert all("raw pixels" in c for c in caps.values())  # the baseline's curves are named
    # the baseline beside the model: a column of each summary table, with its own values
    closed = next(t["rows"] for t in p.tables if t["rows"][0][0]["text"] == "metric")
    assert [c["text"] for c in closed[0]] == ["metric", "model", "baseline: raw pixels"]
    top1 = next(r for r in closed if r[0]["text"] == "top-1 accuracy")
    assert top1[1]["text"] == f'{ev.metrics["closed_set"]["top_k"]["top1"]:.2%}'
    assert top1[2]["text"] == f'{base.metrics["closed_set"]["top_k"]["top1"]:.2%}'
    fpir_rows = _table(p, "fpir")
    assert "FNIR (baseline: raw pixels)" in [c["text"] for c in fpir_rows[0]]
    assert "TAR (baseline: raw pixels)" in [c["text"] for c in _table(p, "far")[0]]
    # FPIR and FAR rows in ascending order
    fp = [float(r[0]["text"].split()[-1]) for r in fpir_rows if r[0]["text"].startswith("FNIR @ FPIR")]
    assert fp == sorted(fp) == [0.01, 0.05, 0.1]
    far = [float(r[0]["text"].split()[-1]) for r in _table(p, "far")
           if r[0]["text"].startswith("TAR @ FAR")]
    assert far == sorted(far) and len(far) >= 3
    # one count of classes with undefined precision, equal to the metric; no other count anywhere
    n_undef = ev.metrics["closed_set"]["undefined"]["precision"]
    assert n_undef >= 1  # glyph-5003 is queried but never predicted
    assert sum("undefined precision" in r[0]["text"] for t in p.tables for r in t["rows"]) == 1
    assert p.undef == [str(n_undef), str(base.metrics["closed_set"]["undefined"]["precision"])]
    assert not re.search(r"\d+\s+(classes\s+)?undefined", page)


def test_report_thumbnails_are_the_original_files_side_by_side(swapped, tmp_path):
    from PIL import Image

    rec, q, truth, nm, src = swapped
    files = []  # each query as a 200x150 photo-like file (not the 32-px model input)
    for k, g in enumerate(src):
        a = (render_glyphs([g.class_id], [g.index], size=150, seed=g.seed)[0] * 255).astype(np.uint8)
        im = Image.new("RGB", (200, 150), (30, 60, 90))
        im.paste(Image.fromarray(a).convert("RGB"), (25, 0))
        files.append(tmp_path / truth[k] / f"q{k}.png")
        files[-1].parent.mkdir(exist_ok=True)
        im.save(files[-1])
    ev = evaluate_recognizer(rec, q, truth, nm, fpirs=(0.1,))
    assert any(c["true"] == "glyph-5003" for c in ev.confusions)
    nm_src = glyph_sources(range(6000, 6150), 1, seed=2)
    page = render_html(ev, images=q, labels=truth, sources=[str(f) for f in files],
                       non_mated_sources=nm_src, class_sample=class_sample_finder())
    p = _parse(page)
    rows = _table(p, "confusions")
    assert [c["text"] for c in rows[0]] == ["true class", "predicted as", "count",
                                            "queries (true class)", "the predicted class"]
    for r in rows[1:]:
        # queries: the files themselves, downscaled to 96 px on the long side, named by file
        assert r[3]["imgs"] and all(_size(s) == (96, 72) for s in r[3]["imgs"])
        named = [f for f in files if str(f.relative_to(tmp_path)) in r[3]["text"]]
        assert len(named) == len(r[3]["imgs"]) and all(f.parent.name == r[0]["text"] for f in named)
        # beside them, a sample of the predicted class: glyph labels are drawn from their id at 96 px
        assert [_size(s) for s in r[4]["imgs"]] == [(96, 96)]
        assert r[1]["text"].replace("-", " ") in r[4]["text"]
    assert f"Query files are named relative to {tmp_path}." in page
    row = next(r for r in rows[1:] if r[0]["text"] == "glyph-5003")
    assert row[1]["text"] == "glyph-5002" and "glyph 5002 #0" in row[4]["text"]
    # the worst non-mated searches, highest score first, named by glyph id, with the matched class
    worst = _table(p, "worst")
    scores = [float(r[1]["text"]) for r in worst[1:]]
    assert scores == sorted(scores, reverse=True)
    assert scores[0] == pytest.approx(ev.non_mated_scores.max(), abs=1e-4)
    for r in worst[1:]:
        i = int(r[0]["text"])
        assert r[2]["text"] == ev.non_mated_predictions[i]
        assert str(nm_src[i]) in r[3]["text"] and [_size(s) for s in r[3]["imgs"]] == [(96, 96)]
        assert len(r[4]["imgs"]) == 1 and "a drawing rendered from its id" in r[4]["text"]
    # a gallery without images and no other sample of the class: the query, the class named, and why
    p = _parse(render_html(ev, sources=[str(f) for f in files]))
    for r in _table(p, "confusions")[1:]:
        assert r[3]["imgs"] and not r[4]["imgs"]
        assert r[1]["text"] in r[4]["text"] and "gallery stores templates, not images" in r[4]["text"]


def test_pixel_baseline_is_the_demos_nearest_class_mean(enrolled):
    rec, q, truth, nm = enrolled
    images, cls = GlyphSource.batch(np.arange(5000, 5060), 3, seed=1)
    base = pixel_baseline(images, [f"glyph-{c}" for c in cls])
    flat = images.reshape(len(images), -1).numpy()
    assert np.allclose(base.gallery.templates("glyph-5007")[0], pixel_templates(flat, 3)[7], atol=1e-6)
    ev = evaluate_recognizer(base, q, truth, nm)
    summary = pixel_summary(pixel_templates(flat, 3), q.reshape(len(q), -1).numpy(),
                            nm.reshape(len(nm), -1).numpy(), nm.reshape(len(nm), -1).numpy(),
                            np.array([int(t.split("-")[1]) - 5000 for t in truth]), 0.1, 0.1)
    assert ev.metrics["closed_set"]["top_k"]["top1"] == pytest.approx(summary["top1"])
    assert ev.metrics["closed_set"]["top_k"]["top5"] == pytest.approx(summary["top5"])


def test_demo_hands_its_baseline_to_the_report(tmp_path):
    from megaclass.demo import DemoConfig, run_demo

    c = DemoConfig.quick()
    c.train_steps, c.enrolled, c.non_mated = 10, 60, 60
    report = run_demo(tmp_path, c, progress=False, log=lambda *a: None)
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["baseline"]["name"] == "raw pixels"
    # the report's baseline is the demo's raw-pixel baseline (same queries, same nearest class mean)
    for k in ("top1", "top5"):
        assert saved["baseline"]["closed_set"]["top_k"][k] == pytest.approx(report["raw_pixel_baseline"][k])
    p = _parse((tmp_path / "report.html").read_text())
    assert "FNIR (baseline: raw pixels)" in [c["text"] for c in _table(p, "fpir")[0]]
    for r in _table(p, "confusions")[1:]:  # glyph drawings at 96 px, the class's enrolled drawing
        assert all(_size(s) == (96, 96) for s in r[3]["imgs"] + r[4]["imgs"])
        assert "an enrolled sample" in r[4]["text"]
    worst = _table(p, "worst")
    assert len(worst) > 1 and all(re.search(r"glyph 3\d+ #[01]", r[3]["text"]) for r in worst[1:])
