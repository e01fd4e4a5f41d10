"""The CLI as a user runs it: real subprocesses, exit codes, JSON output."""

import json

import pytest

from _cli_helpers import run


def test_help_lists_every_command():
    out = run("--help").stdout
    for cmd in ("demo", "train", "enroll", "identify", "verify", "erase", "evaluate", "calibrate"):
        assert cmd in out
    assert "--gallery" in run("identify", "--help").stdout


def test_enroll_identify_verify_erase_round_trip(tiny_model_dir, tmp_path):
    g = tmp_path / "g"
    out = json.loads(run("enroll", "-m", tiny_model_dir, "-g", g, "--from", "glyphs:7000-7030",
                         "--per-class", "4", "--json").stdout)
    assert out == {"classes": 30, "samples": 120, "gallery_classes": 30}
    res = json.loads(run("identify", "-m", tiny_model_dir, "-g", g, "glyph:7003", "-k", "3",
                         "--no-threshold", "--json").stdout)
    assert res["results"][0]["candidates"][0]["label"] == "glyph-7003"
    cal = json.loads(run("calibrate", "-m", tiny_model_dir, "-g", g, "--non-mated",
                         "glyphs:8000-8100", "--target-fpir", "0.05", "--json").stdout)
    assert cal["achieved_fpir"] <= 0.05 and cal["n_non_mated"] == 200
    ev = json.loads(run("evaluate", "-m", tiny_model_dir, "-g", g, "--mated", "glyphs:7000-7030",
                        "--non-mated", "glyphs:9000-9100", "--json").stdout)
    assert ev["mated_searches"] == 30 and 0 <= ev["top1"] <= ev["top5"] <= 1
    assert ev["open_set"][0]["target_fpir"] == 0.01
    v = run("verify", "-m", tiny_model_dir, "-g", g, "glyph-7003", "glyph:7003", "--json",
            check=False)
    assert v.returncode in (0, 1) and json.loads(v.stdout)["label"] == "glyph-7003"
    er = json.loads(run("erase", "-g", g, "glyph-7003", "--json").stdout)
    assert er == {"label": "glyph-7003", "templates_removed": 1, "gallery_classes": 29}


def test_enroll_single_label_from_image_files(tiny_model_dir, tmp_path):
    from PIL import Image

    from megaclass import GlyphSource

    files = []
    for i, img in enumerate(GlyphSource.samples(42, n=3)):
        p = tmp_path / f"s{i}.png"
        Image.fromarray((img[0].numpy() * 255).astype("uint8")).save(p)
        files.append(p)
    out = json.loads(run("enroll", "-m", tiny_model_dir, "-g", tmp_path / "g", "alice",
                         *files, "--json").stdout)
    assert out["samples"] == 3


@pytest.mark.parametrize("args,message", [
    (["erase", "-g", "{g}", "nobody"], "nobody"),
    (["identify", "-m", "{m}", "-g", "{g}", "{bad}", "--no-threshold"], "bad.png"),
    (["identify", "-m", "{tmp}", "-g", "{g}", "glyph:1"], "not a megaclass model"),
    (["identify", "-m", "{m}", "-g", "{tmp}/nothing", "glyph:1"], "not a gallery"),
    (["train", "glyphs:5-2", "-m", "{tmp}/x"], "bad glyph spec"),
    (["train", "glyphs:10", "-m", "{tmp}/x", "--head", "nope"], "unknown head"),
])
def test_errors_are_one_line_and_nonzero(tiny_model_dir, tmp_path, args, message):
    g = tmp_path / "g"
    run("enroll", "-m", tiny_model_dir, "-g", g, "--from", "glyphs:1-3")
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG garbage")
    args = [a.format(g=g, m=tiny_model_dir, bad=bad, tmp=tmp_path) for a in args]
    proc = run(*args, check=False)
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) <= 2


def test_train_with_partial_fc_options(tmp_path):
    out = json.loads(run("train", "glyphs:40", "-m", tmp_path / "m", "--head", "partial_fc",
                         "--sample-rate", "0.5", "--centers-dtype", "bfloat16", "--steps", "2",
                         "--batch-size", "32", "--workers", "0", "--json").stdout)
    assert out["steps"] == 2 and out["classes"] == 40
    bad = run("train", "glyphs:40", "-m", tmp_path / "m", "--head", "partial_fc",
              "--sample-rate", "0", "--steps", "1", check=False)
    assert bad.returncode == 2 and "sample_rate" in bad.stderr


def test_train_help_names_every_head():
    from megaclass.heads.registry import HEADS

    out = " ".join(run("train", "--help").stdout.split())
    assert all(name in out for name in HEADS)
