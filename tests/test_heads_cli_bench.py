"""`megaclass predict`, `megaclass export-head` and a tiny `megaclass bench heads`."""

import json

import pytest
from typer.testing import CliRunner

from megaclass import cli
from megaclass.gallery import Gallery
from megaclass.heads import PartialFCHead, make_head
from megaclass.models import Encoder, EncoderConfig

runner = CliRunner()


@pytest.fixture(scope="module")
def app():
    cli._register_area_commands()
    return cli.app


def test_predict_and_export_head(app, tmp_path):
    Encoder(EncoderConfig(dim=16, widths=(8, 16))).save(tmp_path / "m")
    head = PartialFCHead(12, 16, sample_rate=0.5)
    head.save(tmp_path / "h")
    res = runner.invoke(app, ["predict", "-m", str(tmp_path / "m"), "--head", str(tmp_path / "h"),
                              "glyph:3", "glyph:4", "-k", "3", "--data", "glyphs:100-112", "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.output)
    assert len(out["predictions"]) == 2 and len(out["predictions"][0]["candidates"]) == 3
    assert out["predictions"][0]["candidates"][0]["label"].startswith("glyph-1")
    res = runner.invoke(app, ["export-head", str(tmp_path / "h"), "-g", str(tmp_path / "g"), "--json"])
    assert res.exit_code == 0, res.output
    with Gallery.open(tmp_path / "g") as g:
        assert len(g) == 12
        top = g.search(head.class_centers()[7:8].numpy(), k=1)[0][0]
        assert top.label == "class-7"


def test_export_rejects_head_without_centres(tmp_path):
    from megaclass.errors import ConfigError
    from megaclass.heads.export import export_to_gallery

    with pytest.raises(ConfigError, match="no class centres"):
        export_to_gallery(make_head("adaptive", 10, 16), tmp_path / "g")


@pytest.mark.slow
def test_bench_heads_tiny(app, tmp_path):
    res = runner.invoke(app, ["bench", "heads", "--out", str(tmp_path), "--sizes", "200",
                              "--head", "softmax", "--head", "partial_fc", "--steps", "2", "--warmup", "1",
                              "--quick",
                              "--dim", "32", "--batch", "32", "--no-ten-million", "--json"])
    assert res.exit_code == 0, res.output
    report = json.loads((tmp_path / "heads.json").read_text())
    rows = {r["head"]: r for r in report["results"]}
    assert set(rows) == {"softmax", "partial_fc"}
    for r in rows.values():
        assert r["median_step_s"] > 0 and r["peak_rss_bytes"] > 0 and r["state_bytes"] > 0
        assert 0.0 <= r["top1"] <= 1.0 and r["top5"] >= r["top1"]  # from the quick comparison, 200 classes
        assert 0 < r["peak_rss_bytes"] < 2**32                     # its own peak (VmHWM), not pytest's
    assert rows["softmax"]["speedup_vs_softmax"] == pytest.approx(1.0)
    acc = report["accuracy"]  # sweep, then training to a plateau, on frozen reference-model features
    assert set(acc["sweep"]) == {"softmax", "partial_fc"} and all(s["winner"] for s in acc["sweep"].values())
    for r in acc["summary"]:
        assert 0.5 < r["test_top1"] <= 1.0 and r["stopped_by"] in ("plateau", "max_steps", "max_seconds")
        assert r["peak_rss_bytes"] > r["state_bytes"] > 0
    assert (tmp_path / "accuracy" / "head_comparison.png").stat().st_size > 1000
    assert (tmp_path / "heads.png").stat().st_size > 1000


def test_bench_rejects_bad_sizes(app, tmp_path):
    res = runner.invoke(app, ["bench", "heads", "--out", str(tmp_path), "--sizes", "abc"])
    assert res.exit_code != 0
