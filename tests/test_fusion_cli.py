"""Ensembles on one gallery folder (issue 19 part 3): ``Recognizer([a, b], gallery=...)``, the CLI
with ``-m a -m b`` end to end, ``megaclass serve`` with two models (a real uvicorn process),
and the ensemble's bad input (a gallery opened with fewer / other / reordered models, a plain
gallery with several models, vectors of the wrong width)."""

import json
from pathlib import Path

import pytest

from _cli_helpers import run
from megaclass import GlyphSource
from megaclass.errors import ConfigError, DuplicateLabelError
from megaclass.fusion import FusedRecognizer
from megaclass.recognizer import Recognizer


@pytest.fixture(scope="module")
def second_model_dir(tmp_path_factory):
    """Another quickly trained model: other seed, other head, other dimension (24)."""
    from megaclass import train_encoder

    enc = train_encoder(GlyphSource(range(100), samples_per_class=16), head="arcface", steps=120,
                        batch_size=64, dim=24, widths=(16, 32), progress=False, num_workers=0, seed=1)
    path = tmp_path_factory.mktemp("model_b")
    enc.save(path)
    return path


@pytest.fixture(scope="module")
def models(tiny_model_dir, second_model_dir):
    return ["-m", tiny_model_dir, "-m", second_model_dir]


def test_cli_two_models_enroll_calibrate_identify_verify_evaluate_erase(models, tmp_path):
    g = tmp_path / "g"
    out = json.loads(run("enroll", *models, "-g", g, "--from", "glyphs:7000-7030", "--per-class", "4",
                         "--json").stdout)
    assert out == {"classes": 30, "samples": 120, "gallery_classes": 30}
    manifest = json.loads((g / "ensemble.json").read_text())
    assert manifest["dims"] == [32, 24] and manifest["members"] == ["model-0", "model-1"]
    assert (g / "model-0" / "gallery.db").is_file() and (g / "model-1" / "gallery.db").is_file()

    cal = json.loads(run("calibrate", *models, "-g", g, "--non-mated", "glyphs:8000-8100",
                         "--target-fpir", "0.05", "--json").stdout)
    assert cal["n_non_mated"] == 200 and cal["achieved_fpir"] <= 0.05
    res = json.loads(run("identify", *models, "-g", g, "glyph:7003", "-k", "3", "--json").stdout)
    assert res["threshold"] == pytest.approx(cal["threshold"])  # the fused threshold, stored
    top = res["results"][0]["candidates"]
    assert top[0]["label"] == "glyph-7003" and len(top) == 3
    v = run("verify", *models, "-g", g, "glyph-7003", "glyph:7003", "--threshold", "-100", "--json")
    assert json.loads(v.stdout)["accepted"] and v.returncode == 0

    ev = json.loads(run("evaluate", *models, "-g", g, "-q", "glyphs:7000-7030", "--non-mated",
                        "glyphs:8100-8350", "--json").stdout)
    assert ev["mated_searches"] == 30 and ev["non_mated_searches"] == 250
    assert ev["gallery"] == {"classes": 30, "dim": 56}
    assert ev["top1"] >= 0.6  # two weak tiny models; chance is 1/30
    assert ev["identification"]["gallery_threshold"] == pytest.approx(cal["threshold"])

    erased = json.loads(run("erase", "-g", g, "glyph-7003", "--json").stdout)
    assert erased["gallery_classes"] == 29
    with Recognizer([Path(models[1]), Path(models[3])], gallery=g) as ens:  # gone from both
        assert all("glyph-7003" not in m.gallery and len(m.gallery) == 29 for m in ens.members)
    stats = json.loads(run("stats", "-g", g, "--json").stdout)
    assert stats["classes"] == 29 and stats["dims"] == [32, 24]


def test_cli_ensemble_opened_with_other_models_is_refused(models, tiny_model_dir, second_model_dir,
                                                          tmp_path):
    g = tmp_path / "g"
    run("enroll", *models, "-g", g, "--from", "glyphs:7000-7004", "--per-class", "2")
    fps = json.loads((g / "ensemble.json").read_text())["models"]
    cases = [(["-m", tiny_model_dir], f"opened with 1 ({fps[0]}): missing {fps[1]}"),
             (["-m", second_model_dir, "-m", tiny_model_dir], "the same models in another order"),
             (["-m", tiny_model_dir, "-m", tiny_model_dir], f"missing {fps[1]}")]
    for ms, says in cases:
        p = run("identify", *ms, "-g", g, "glyph:7001", "--no-threshold", check=False)
        assert p.returncode == 2 and says in p.stderr, (ms, p.stderr)
        assert f"enrolled with 2 models (fingerprints {fps[0]}, {fps[1]})" in p.stderr
    single = tmp_path / "single"
    run("enroll", "-m", tiny_model_dir, "-g", single, "--from", "glyphs:7000-7002", "--per-class", "2")
    p = run("identify", *models, "-g", single, "glyph:7001", "--no-threshold", check=False)
    assert p.returncode == 2 and "is a single-model gallery" in p.stderr
    p = run("enroll", *models, "-g", g, "--from", "glyphs:7010-7012", "--retain-samples", check=False)
    assert p.returncode == 2 and "--retain-samples" in p.stderr


def test_recognizer_of_a_list_is_an_ensemble_atomic_across_models(tiny_encoder, second_model_dir, tmp_path):
    from megaclass.models import load_encoder

    b = load_encoder(second_model_dir)
    ens = Recognizer([tiny_encoder, b], gallery=tmp_path / "g")
    assert isinstance(ens, FusedRecognizer) and ens.dims == [32, 24]
    assert [m.gallery.path for m in ens.members] == [tmp_path / "g" / "model-0", tmp_path / "g" / "model-1"]
    for c in range(5):
        ens.enroll(f"c{c}", GlyphSource.samples(c, 3, seed=1))
    # a class the second member already holds (a crash between members, say): the first
    # member's enroll is undone, so the class is in both galleries or in neither
    ens.members[1].gallery.enroll("late", ens.members[1].embed(GlyphSource.samples(9, 1)))
    with pytest.raises(DuplicateLabelError):
        ens.enroll("late", GlyphSource.samples(9, 3, seed=1))
    assert "late" not in ens.members[0].gallery
    ens.members[1].gallery.erase("late")
    # ensemble embeddings are the members' side by side; the gallery view takes them whole
    vec = ens.embed(GlyphSource.samples(2, 1, seed=4))
    assert vec.shape == (1, 56)
    ens.calibrate(GlyphSource.batch(list(range(5000, 5200)), 1, seed=5)[0], target_fpir=0.05)
    assert [c.label for c in ens.gallery.search(vec, k=5)[0]] == \
        [c.label for c in ens.identify(GlyphSource.samples(2, 1, seed=4), threshold=None)[0].candidates]
    # the gallery view's templates are scaled so that a dot product ranks like the fused score
    fused = {c.label: c.score for c in ens.gallery.search(vec, k=5)[0]}
    dots = {lb: float(ens.gallery.templates(lb)[0] @ vec[0]) for lb in fused}
    assert sorted(fused, key=fused.get) == sorted(dots, key=dots.get)
    with pytest.raises(Exception, match="56 columns"):
        ens.identify_vectors(vec[:, :32], threshold=None)
    ens.close()
    with pytest.raises(ConfigError, match="holds an ensemble of 2 models"):
        Recognizer(tiny_encoder, tmp_path / "g")
    with pytest.raises(ConfigError, match="missing"):
        Recognizer([tiny_encoder], gallery=tmp_path / "g")


@pytest.mark.slow
def test_serve_two_models_real_server(tiny_model_dir, second_model_dir, models, tmp_path):
    """`megaclass serve -m a -m b`: enroll and identify over HTTP, fused; keys in model-0."""
    httpx = pytest.importorskip("httpx")
    pytest.importorskip("uvicorn")
    from _serve_helpers import files, glyph_pngs
    from megaclass.serve.process import ServerProcess

    g = tmp_path / "g"
    run("enroll", *models, "-g", g, "--from", "glyphs:7000-7020", "--per-class", "3")
    run("calibrate", *models, "-g", g, "--non-mated", "glyphs:8000-8100", "--target-fpir", "0.05")
    token = json.loads(run("keys", "add", "-g", g, "--role", "admin", "--json").stdout)["token"]
    assert (g / "model-0" / "gallery.db").is_file()
    log = tmp_path / "server.log"
    with ServerProcess(tiny_model_dir, g, log=log, extra_args=("--model", str(second_model_dir))) as server:
        h = {"Authorization": f"Bearer {token}"}
        with httpx.Client(base_url=server.url, headers=h, timeout=60) as http:
            r = http.post("/v1/classes", data={"label": "c31"}, files=files(glyph_pngs(31, 3)))
            assert r.status_code == 201 and r.json()["gallery_classes"] == 21, r.text
            r = http.post("/v1/identify", files=files(glyph_pngs(31, 1, seed=4)), params={"k": 3})
            assert r.status_code == 200, r.text
            assert r.json()["results"][0]["candidates"][0]["label"] == "c31"
            stats = http.get("/v1/stats").json()
            assert stats["dim"] == 56 and stats["threshold"] is not None
            # vectors of one model's width are not ensemble embeddings: 422 naming the widths
            r = http.post("/v1/identify/vectors", json={"vectors": [[0.1] * 32]})
            assert r.status_code == 422 and "56 columns" in r.text
            assert http.delete("/v1/classes/c31").status_code == 200
    assert "not calibrated" not in log.read_text()
    with Recognizer([tiny_model_dir, second_model_dir], gallery=g) as ens:
        assert all("c31" not in m.gallery for m in ens.members) and len(ens) == 20
    # served with one model of the two: refused at start, naming the missing one
    p = run("serve", "-m", tiny_model_dir, "-g", g, "--port", "1", check=False)
    assert p.returncode == 2 and "missing" in p.stderr


def test_cli_fusion_rule_is_chosen_stored_and_changed_by_calibrate(models, tiny_model_dir, tmp_path):
    """--fusion on enroll sets a new ensemble's rule, identify uses the stored one, enroll with
    another rule is refused, calibrate --fusion changes it; a bad rule writes nothing."""
    g = tmp_path / "g"
    bad = run("enroll", *models, "-g", g, "--from", "glyphs:7000-7004", "--fusion", "maximum", check=False)
    assert bad.returncode == 2 and "unknown fusion rule 'maximum'" in bad.stderr and not g.exists()
    bad = run("enroll", *models, "-g", g, "--from", "glyphs:7000-7004", "--fusion", "zsum:1", check=False)
    assert bad.returncode == 2 and "1 weight(s) for 2 models" in bad.stderr and not g.exists()
    one = run("enroll", "-m", tiny_model_dir, "-g", g, "--from", "glyphs:7000-7004", "--fusion", "zsum",
              check=False)
    assert one.returncode == 2 and "give two or more -m" in one.stderr and not g.exists()

    run("enroll", *models, "-g", g, "--from", "glyphs:7000-7020", "--per-class", "3",
        "--fusion", "minmax:2,1")
    cal = json.loads(run("calibrate", *models, "-g", g, "--non-mated", "glyphs:8000-8100",
                         "--target-fpir", "0.05", "--json").stdout)
    assert cal["fusion"] == "minmax:2,1"  # the stored rule, without --fusion
    res = json.loads(run("identify", *models, "-g", g, "glyph:7003", "--json").stdout)
    assert res["threshold"] == pytest.approx(cal["threshold"])
    assert json.loads(run("stats", "-g", g, "--json").stdout)["fusion"] == "minmax:2,1"

    other = run("enroll", *models, "-g", g, "c", "glyph:5", "--fusion", "zsum", check=False)
    assert other.returncode == 2 and "stored rule --fusion minmax:2,1, not zsum" in other.stderr
    assert "calibrate --fusion zsum" in other.stderr
    cal2 = json.loads(run("calibrate", *models, "-g", g, "--non-mated", "glyphs:8000-8100",
                          "--target-fpir", "0.05", "--fusion", "borda", "--json").stdout)
    assert cal2["fusion"] == "borda"
    with Recognizer([Path(models[1]), Path(models[3])], gallery=g) as ens:
        assert ens.fusion == "borda" and ens.threshold == pytest.approx(cal2["threshold"])
        assert len(ens) == 20  # the refused enroll wrote nothing


def test_create_app_fusion_rule_new_stored_and_refused(tiny_model_dir, second_model_dir, tmp_path):
    """`serve --fusion`: the rule of a new ensemble, the stored one when left out; another rule
    than the stored one, or a rule for one model's gallery, is refused before serving."""
    pytest.importorskip("fastapi")
    from megaclass.serve.app import create_app

    two = [tiny_model_dir, second_model_dir]
    app = create_app(two, tmp_path / "g", fusion="borda")
    ens = app.state.service.recognizer
    ens.enroll("seven", GlyphSource.samples(7, 2, seed=1))  # the first enroll stores the rule
    app.state.service.close()
    app = create_app(two, tmp_path / "g")
    assert app.state.service.recognizer.fusion == "borda"
    app.state.service.close()
    with pytest.raises(ConfigError, match="stored rule --fusion borda, not zsum:1,3"):
        create_app(two, tmp_path / "g", fusion="zsum:1,3")
    with pytest.raises(ConfigError, match="unknown fusion rule"):
        create_app(two, tmp_path / "g", fusion="mean")
    with pytest.raises(ConfigError, match="fuses the scores of several models"):
        create_app(tiny_model_dir, tmp_path / "plain", fusion="zsum")
    with pytest.raises(ConfigError, match="fuses the scores of several models"):
        create_app([tiny_model_dir], tmp_path / "plain", fusion="zsum")


def test_cli_one_gallery_commands_refuse_an_ensemble_writing_nothing(models, tiny_model_dir, tmp_path):
    """What a single-model gallery does and an ensemble does not: a clear refusal (exit 2)
    naming the limitation, and nothing written."""
    g = tmp_path / "g"
    p = run("enroll", *models, "-g", g, "--from", "glyphs:7000-7004", "--retain-samples", check=False)
    assert p.returncode == 2 and "--retain-samples" in p.stderr and "ensemble" in p.stderr
    assert not g.exists()  # refused before the ensemble folder is created
    run("enroll", *models, "-g", g, "--from", "glyphs:7000-7004", "--per-class", "2")
    before = sorted(str(f.relative_to(g)) for f in g.rglob("*"))
    for args in (("gallery", "export", "-g", g, tmp_path / "exp"),
                 ("gallery", "reembed", "-g", g, "-m", tiny_model_dir),
                 ("gallery", "check", "-g", g)):
        p = run(*args, check=False)
        assert p.returncode == 2 and "is an ensemble gallery (2 models" in p.stderr, (args, p.stderr)
        assert "does not support an ensemble" in p.stderr and "Traceback" not in p.stderr
    assert not (tmp_path / "exp").exists()
    assert sorted(str(f.relative_to(g)) for f in g.rglob("*")) == before
