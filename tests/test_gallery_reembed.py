"""Model upgrades without losing the gallery (issue 15 part 3): per-template provenance,
``Gallery.reembed`` / ``megaclass gallery reembed``, resume after kill -9, bad input.

The kill -9 cycles run real subprocesses (``megaclass.bench.reembed.torture``): a few small
cycles here; ``MEGACLASS_REEMBED_TORTURE=5000x20`` (classes x cycles) runs the issue's size,
as does ``megaclass bench reembed``.
"""

from __future__ import annotations

import fcntl
import json
import os
import sqlite3

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from megaclass import cli
from megaclass.bench.reembed import _expected, _models, check_one_model, torture
from megaclass.errors import ConfigError, InvalidInputError, ModelMismatchError
from megaclass.gallery import Gallery
from megaclass.gallery.crypto import generate_key

CLASSES, PER_CLASS = 40, 5


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """Two random-weight encoders of one dim (A, B) and one of another dim (C)."""
    from megaclass.models import Encoder
    from megaclass.models.encoder import EncoderConfig

    root = tmp_path_factory.mktemp("models")
    out = {k: str(v) for k, v in _models(root, 16).items()}
    torch.manual_seed(2)
    Encoder(EncoderConfig(dim=24, widths=(8, 16))).save(root / "model-C")
    out["C"] = str(root / "model-C")
    return out


@pytest.fixture(scope="module")
def expected(models):
    return {name: _expected(path, CLASSES, PER_CLASS) for name, path in models.items()}


def run(*args, code=0):
    cli._register_area_commands()
    res = CliRunner().invoke(cli.app, [str(a) for a in args], catch_exceptions=True)
    got = 2 if res.exception is not None and not isinstance(res.exception, SystemExit) else res.exit_code
    assert got == code, f"exit {got} (wanted {code}): {res.output} {res.exception!r}"
    return res


def enroll(model, gallery, classes=CLASSES, *extra):
    run("enroll", "-m", model, "-g", gallery, "--from", f"glyphs:0-{classes}", "--per-class", PER_CLASS,
        "--quiet", *extra)


def test_reembed_switches_to_exactly_the_new_models_templates(models, expected, tmp_path):
    g = tmp_path / "g"
    enroll(models["A"], g)
    with Gallery.open(g) as gal:
        gal.set_setting("threshold", 0.5)
        assert gal.template_models() == {expected["A"][0]: CLASSES}
    res = run("gallery", "reembed", "-g", g, "-m", models["B"], "--from", f"glyphs:0-{CLASSES}", "--json")
    report = json.loads(res.output)
    assert report["status"] == "switched" and report["classes"] == CLASSES
    assert report["dropped_settings"] == ["threshold"]
    fp, want = expected["B"]
    assert check_one_model(g, {fp: want, expected["A"][0]: expected["A"][1]}, CLASSES) == fp
    with Gallery.open(g) as gal:
        assert gal.get_setting("threshold") is None  # the old model's threshold does not fit
        assert gal.class_meta("glyph-3")["_samples"] == PER_CLASS
    again = json.loads(run("gallery", "reembed", "-g", g, "-m", models["B"], "--from",
                           f"glyphs:0-{CLASSES}", "--json").output)
    assert again["status"] == "already"


def test_other_dim_is_allowed_and_says_so(models, expected, tmp_path):
    g = tmp_path / "g"
    enroll(models["A"], g)
    res = run("gallery", "reembed", "-g", g, "-m", models["C"], "--from", f"glyphs:0-{CLASSES}", "--quiet")
    assert "24-d" in res.output and "16-d" in res.output and "new 24-d index" in res.output
    with Gallery.open(g) as gal:
        assert gal.dim == 24 and gal.model == expected["C"][0]
        np.testing.assert_allclose(gal.templates("glyph-7")[0], expected["C"][1][7], atol=1e-5)


def test_a_process_on_the_old_model_gets_refused_not_a_mixed_answer(models, expected, tmp_path):
    g = tmp_path / "g"
    enroll(models["A"], g)
    fa, fb = expected["A"][0], expected["B"][0]
    with Gallery.open(g, read_only=True) as server:  # a server process keeps it open
        assert server.search(expected["A"][1][:2], k=1, model=fa)[0][0].label == "glyph-0"
        with Gallery.open(g) as gal:
            gal.reembed(models["B"], f"glyphs:0-{CLASSES}")
        with pytest.raises(ModelMismatchError, match="re-embedded"):
            server.search(expected["A"][1][:2], k=1, model=fa)
        assert server.search(expected["B"][1][:1], k=1, model=fb)[0][0].score > 0.999


def test_enroll_and_erase_during_a_reembed_are_handled(models, expected, tmp_path):
    """Classes enrolled/replaced meanwhile are staged again before the switch; erased ones leave."""
    from megaclass.recognizer import Recognizer

    g = tmp_path / "g"
    enroll(models["A"], g, CLASSES - 2)
    calls = []
    with Gallery.open(g) as gal:
        rec = Recognizer(models["A"], gal)

        def during(done, total):
            calls.append((done, total))
            if len(calls) == 1:  # after the first chunk: writes with the old model
                from megaclass.data.glyphs import GlyphSource

                for i in (CLASSES - 2, CLASSES - 1):
                    rec.enroll(f"glyph-{i}", GlyphSource.batch(np.asarray([i]), PER_CLASS, seed=1)[0])
                rec.enroll("glyph-0", GlyphSource.batch(np.asarray([0]), PER_CLASS, seed=1)[0], replace=True)
                gal.erase("glyph-5")

        report = gal.reembed(models["B"], f"glyphs:0-{CLASSES}", chunk_classes=8, progress=during)
        assert report["classes"] == CLASSES - 1 and "glyph-5" not in gal
        assert calls[-1][1] > CLASSES - 2  # the new classes were counted in
        fp, want = expected["B"]
        assert gal.template_models() == {fp: CLASSES - 1}
        for lb in gal.labels():
            np.testing.assert_allclose(gal.templates(lb)[0], want[int(lb.split("-")[1])], atol=1e-4)


def test_bad_input(models, expected, tmp_path):
    g = tmp_path / "g"
    enroll(models["A"], g)
    before = (g / "gallery.db").stat().st_size
    # classes the source lacks: named, nothing staged
    res = run("gallery", "reembed", "-g", g, "-m", models["B"], "--from", "glyphs:0-30", code=2)
    assert "lacks 10 classes" in str(res.exception) and "glyph-39" in str(res.exception)
    with Gallery.open(g) as gal:
        assert gal.get_setting("reembed") is None and gal.model == expected["A"][0]
    with pytest.raises(InvalidInputError, match="glyph-30"):
        Gallery.open(g).reembed(models["B"], "glyphs:0-30")
    # no source at all: names both ways
    with pytest.raises(ConfigError, match="--from.*--retain-samples"):
        with Gallery.open(g) as gal:
            gal.reembed(models["B"])
    # unknown gallery, and a folder that is not one
    res = run("gallery", "reembed", "-g", tmp_path / "nope", "-m", models["B"], "--from", "glyphs:0-1",
              code=2)
    assert "is not a gallery" in str(res.exception)
    with pytest.raises(InvalidInputError, match="not a folder"):
        with Gallery.open(g) as gal:
            gal.reembed(models["B"], tmp_path / "missing-folder")
    # a second re-embed while one runs: refused
    fd = os.open(g / "reembed.lock", os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        with pytest.raises(ConfigError, match="another re-embed"):
            with Gallery.open(g) as gal:
                gal.reembed(models["B"], f"glyphs:0-{CLASSES}")
    finally:
        os.close(fd)
    # resuming with another model: refused until aborted
    with Gallery.open(g) as gal:
        gal.state.store.set_meta("reembed", {"model": expected["B"][0], "dim": 16})
        with pytest.raises(ConfigError, match="in progress"):
            gal.reembed(models["C"], f"glyphs:0-{CLASSES}")
    assert json.loads(run("gallery", "reembed", "-g", g, "--abort", "--json").output)["aborted"]
    # --allow-missing erases what the source lacks, at the switch
    report = Gallery.open(g).reembed(models["B"], "glyphs:0-30", allow_missing=True)
    assert len(report["dropped_classes"]) == 10 and report["classes"] == 30
    assert before > 0


def test_retained_samples_encrypted_with_the_gallery_key(models, expected, tmp_path):
    key = tmp_path / "key"
    key.write_text(generate_key().hex())
    g = tmp_path / "g"
    enroll(models["A"], g, CLASSES, "--retain-samples", "--key-file", key)
    with sqlite3.connect(g / "gallery.db") as conn:  # sealed: no .npy header in clear
        blobs = [r[0] for r in conn.execute("SELECT data FROM samples")]
    assert len(blobs) == CLASSES * PER_CLASS and not any(b"NUMPY" in b for b in blobs)
    res = run("gallery", "reembed", "-g", g, "-m", models["B"], "--key-file", tmp_path / "nokey", code=2)
    assert "cannot read key file" in str(res.exception)
    wrong = tmp_path / "wrong"
    wrong.write_text(generate_key().hex())
    res = run("gallery", "reembed", "-g", g, "-m", models["B"], "--key-file", wrong, code=2)
    assert "wrong key" in str(res.exception)
    res = run("gallery", "reembed", "-g", g, "-m", models["B"], "--key-file", key, "--json")
    assert json.loads(res.output)["source"].startswith("samples retained")
    with Gallery.open(g, key=key) as gal:
        fp, want = expected["B"]
        assert gal.template_models() == {fp: CLASSES}
        # glyph samples are kept as 8-bit images: the template matches to within quantisation
        assert float(gal.templates("glyph-3")[0] @ want[3]) > 0.999
        gal.erase("glyph-3")
        assert gal.state.store.connection.execute(
            "SELECT COUNT(*) FROM samples").fetchone()[0] == (CLASSES - 1) * PER_CLASS


def test_old_gallery_is_migrated_with_its_fingerprint(models, expected, tmp_path):
    g = tmp_path / "g"
    enroll(models["A"], g, 5)
    with sqlite3.connect(g / "gallery.db") as conn:  # a gallery as made before provenance
        conn.executescript(
            "CREATE TABLE t2 (id INTEGER PRIMARY KEY AUTOINCREMENT, class_id INTEGER NOT NULL "
            "REFERENCES classes(id) ON DELETE CASCADE, vector BLOB NOT NULL);"
            "INSERT INTO t2 SELECT id, class_id, vector FROM templates; DROP TABLE templates;"
            "ALTER TABLE t2 RENAME TO templates; DROP TABLE models;")
    with Gallery.open(g, read_only=True) as gal:
        assert gal.template_models() == {expected["A"][0]: 5}
    with Gallery.open(g) as gal:
        assert gal.template_models() == {expected["A"][0]: 5}
        gal.set_setting("model_fingerprint", "another")
        gal.enroll("x", np.ones(16))
        assert gal.template_models() == {expected["A"][0]: 5, "another": 1}
        with pytest.raises(ModelMismatchError):
            gal.search(np.ones(16), model=expected["A"][0])


@pytest.mark.slow
def test_kill_9_at_random_points_leaves_one_model_and_resumes(tmp_path):
    """Real subprocesses SIGKILLed during re-embeds; after each kill every template is one
    model's and searches answer from it; then resumed to completion."""
    size = os.environ.get("MEGACLASS_REEMBED_TORTURE", "80x3")
    classes, cycles = (int(v) for v in size.lower().split("x"))
    result = torture(tmp_path / "w", classes=classes, cycles=cycles, seed=1, log=lambda *a: None)
    assert result["kills"] == cycles and result["final_model"] in ("A", "B")


def test_folder_and_retained_image_files_give_the_same_templates(models, tmp_path):
    """Image files are retained as their original bytes: a re-embed from them equals one
    from the class folders (both read by the new model's input contract)."""
    from PIL import Image

    root = tmp_path / "photos"
    rng = np.random.default_rng(0)
    for c in range(3):
        (root / f"person-{c}").mkdir(parents=True)
        for k in range(2):
            pixels = rng.integers(0, 255, (40, 36), dtype=np.uint8)
            Image.fromarray(pixels).save(root / f"person-{c}" / f"{k}.png")
    for name in ("kept", "folder"):
        run("enroll", "-m", models["A"], "-g", tmp_path / name, "--from", root, "--quiet", "--retain-samples")
    Gallery.open(tmp_path / "kept").reembed(models["C"])  # None: the retained samples
    res = run("gallery", "reembed", "-g", tmp_path / "folder", "-m", models["C"], "--from", root, "--json")
    assert json.loads(res.output)["source"] == str(root)
    with Gallery.open(tmp_path / "kept") as a, Gallery.open(tmp_path / "folder") as b:
        assert a.labels() == b.labels() == ["person-0", "person-1", "person-2"]
        for lb in a.labels():
            np.testing.assert_allclose(a.templates(lb), b.templates(lb), atol=1e-6)


def test_a_class_enrolled_meanwhile_that_the_source_lacks_is_named(models, expected, tmp_path):
    g = tmp_path / "g"
    enroll(models["A"], g)
    with Gallery.open(g) as gal:
        def during(done, total):
            if "stranger" not in gal:
                gal.enroll("stranger", np.ones(16))

        with pytest.raises(InvalidInputError, match="enrolled during the re-embed.*stranger"):
            gal.reembed(models["B"], f"glyphs:0-{CLASSES}", chunk_classes=8, progress=during)
        assert gal.model == expected["A"][0]  # still the old model, the staged work kept
        assert gal.state.store.connection.execute("SELECT COUNT(*) FROM reembed_classes").fetchone()[0] > 0
        report = gal.reembed(models["B"], f"glyphs:0-{CLASSES}", allow_missing=True)
        assert report["dropped_classes"] == ["stranger"] and "stranger" not in gal
        assert gal.template_models() == {expected["B"][0]: CLASSES}


def test_a_gallery_open_during_a_switch_to_another_dim_reads_the_new_templates(models, expected, tmp_path):
    """The store's dim changes under an open gallery when another process switches to a model of
    another dim; templates read afterwards are decoded at the new dim."""
    g = tmp_path / "g"
    enroll(models["A"], g)
    with Gallery.open(g) as gal:
        assert gal.dim == 16
        run("gallery", "reembed", "-g", g, "-m", models["C"], "--from", f"glyphs:0-{CLASSES}", "--quiet")
        got = gal.templates("glyph-7")
        assert gal.dim == 24 and gal.model == expected["C"][0]
        np.testing.assert_allclose(got[0], expected["C"][1][7], atol=1e-5)
