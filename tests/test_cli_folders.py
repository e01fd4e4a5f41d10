"""identify, verify and evaluate read the same root/<class>/<image> layouts as enroll --from
and train, and say which file each result belongs to (issue 13 part 6)."""

from __future__ import annotations

import json

import numpy as np
from PIL import Image

from megaclass import GlyphSource
from test_cli import run

CLASSES = {"latin/glyph-11": 11, "latin/glyph-12": 12, "greek/glyph-13": 13, "glyph-14": 14}


def _write(root, n, start):
    for name, cid in CLASSES.items():
        d = root / name
        d.mkdir(parents=True)
        for i, img in enumerate(GlyphSource.samples(cid, n=n, seed=start)):
            Image.fromarray((img[0].numpy() * 255).astype(np.uint8)).save(d / f"{i}.png")


def test_nested_folders_everywhere(tiny_model_dir, tmp_path):
    _write(tmp_path / "enroll", 4, 0)
    _write(tmp_path / "queries", 2, 7)
    g = tmp_path / "g"
    out = json.loads(run("enroll", "-m", tiny_model_dir, "-g", g, "--from", tmp_path / "enroll",
                         "--json").stdout)
    assert out["classes"] == 4
    res = json.loads(run("identify", "-m", tiny_model_dir, "-g", g, tmp_path / "queries",
                         "--threshold", "0.2", "--json").stdout)
    rows = res["results"]
    assert len(rows) == 8
    assert {r["folder_class"] for r in rows} == set(CLASSES)
    for r in rows:  # each result names its file, below its class folder
        assert r["sample"].endswith(".png") and f"/{r['folder_class']}/" in r["sample"]
    check = res["folder_check"]
    assert check["queries"] == 8
    firsts = [r["candidates"][0]["label"] == r["folder_class"] for r in rows]
    assert check["rank1_is_folder_class"] == sum(firsts)
    assert check["rank1_is_folder_class"] >= 6  # the tiny model still knows these apart

    v = run("verify", "-m", tiny_model_dir, "-g", g, "greek/glyph-13", tmp_path / "queries" / "greek",
            "--threshold", "-1", "--json", check=False)
    out = json.loads(v.stdout)
    assert v.returncode == 0 and out["accepted"] is True
    assert [r["sample"].rsplit("/", 2)[-2:] for r in out["results"]] == [["glyph-13", "0.png"],
                                                                         ["glyph-13", "1.png"]]

    ev = json.loads(run("evaluate", "-m", tiny_model_dir, "-g", g, "--mated", tmp_path / "queries",
                        "--json").stdout)
    by_file = ev["mated_by_file"]
    assert len(by_file) == 8 and ev["mated_searches"] == 8
    assert all(f"/{r['class']}/" in r["file"] for r in by_file)
    assert sum(r["rank1"] == r["class"] for r in by_file) == round(ev["top1"] * 8)


def test_long_commands_show_progress_unless_quiet_or_json(tiny_model_dir, tmp_path):
    _write(tmp_path / "enroll", 2, 0)
    shown = run("enroll", "-m", tiny_model_dir, "-g", tmp_path / "g1", "--from", tmp_path / "enroll")
    assert "enroll" in shown.stderr and "4/4" in shown.stderr  # the bar, on stderr
    quiet = run("enroll", "-m", tiny_model_dir, "-g", tmp_path / "g2", "--from", tmp_path / "enroll",
                "--quiet")
    assert "4/4" not in quiet.stderr and "enrolled 4 class(es)" in quiet.stdout
    as_json = run("enroll", "-m", tiny_model_dir, "-g", tmp_path / "g3", "--from", tmp_path / "enroll",
                  "--json")
    assert "4/4" not in as_json.stderr and json.loads(as_json.stdout)["classes"] == 4
    ev = run("evaluate", "-m", tiny_model_dir, "-g", tmp_path / "g1", "--mated", tmp_path / "enroll")
    assert "embed queries" in ev.stderr and "8/8" in ev.stderr


def test_skip_bad_files_on_enroll_and_evaluate(tiny_model_dir, tmp_path):
    _write(tmp_path / "enroll", 2, 0)
    bad = tmp_path / "enroll" / "greek" / "glyph-13" / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not an image")
    g = tmp_path / "g"
    refused = run("enroll", "-m", tiny_model_dir, "-g", g, "--from", tmp_path / "enroll", check=False)
    assert refused.returncode == 2 and "broken.png" in refused.stderr
    assert not (g / "gallery.db").exists() or json.loads(
        run("stats", "-g", g, "--json").stdout)["classes"] == 0  # nothing enrolled
    ok = run("enroll", "-m", tiny_model_dir, "-g", g, "--from", tmp_path / "enroll", "--skip-bad-files",
             "--json")
    assert json.loads(ok.stdout)["classes"] == 4 and "broken.png" in ok.stderr  # warned, skipped
    ev = run("evaluate", "-m", tiny_model_dir, "-g", g, "--mated", tmp_path / "enroll", "--skip-bad-files",
             "--json")
    assert json.loads(ev.stdout)["mated_searches"] == 8
    assert run("evaluate", "-m", tiny_model_dir, "-g", g, "--mated", tmp_path / "enroll",
               check=False).returncode == 2
