"""``--key-file`` on every command that opens a gallery: encrypted at rest, clear errors."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
from typer.testing import CliRunner

from megaclass import cli
from megaclass.errors import EncryptionKeyError
from megaclass.gallery import Gallery
from megaclass.gallery.crypto import KEY_ENV, KEY_FILE_ENV, generate_key

runner = CliRunner()


@pytest.fixture(autouse=True)
def no_key_in_environment(monkeypatch):
    monkeypatch.delenv(KEY_ENV, raising=False)
    monkeypatch.delenv(KEY_FILE_ENV, raising=False)


@pytest.fixture(scope="module")
def app():
    cli._register_area_commands()
    return cli.app


def invoke(app, *args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def encrypted(app, tiny_model_dir, tmp_path_factory):
    """A gallery of 12 glyph classes enrolled with --key-file, and its key file."""
    import os

    saved = {k: os.environ.pop(k) for k in (KEY_ENV, KEY_FILE_ENV) if k in os.environ}
    root = tmp_path_factory.mktemp("keyfile")
    key_file = root / "gallery.key"
    r = invoke(app, "gallery", "keygen", key_file)
    assert r.exit_code == 0, r.output
    g = root / "g"
    r = invoke(app, "enroll", "-m", tiny_model_dir, "-g", g, "--from", "glyphs:7000-7012",
               "--per-class", "2", "--key-file", key_file, "--json")
    os.environ.update(saved)
    assert r.exit_code == 0, r.output
    assert json.loads(r.output) == {"classes": 12, "samples": 24, "gallery_classes": 12}
    return g, key_file


def test_enroll_then_identify_verify_calibrate_stats_with_key_file(app, tiny_model_dir, encrypted):
    g, key_file = encrypted
    r = invoke(app, "identify", "-m", tiny_model_dir, "-g", g, "glyph:7003", "-k", "3",
               "--key-file", key_file, "--json", "--no-threshold")
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)["results"][0]["candidates"][0]["label"] == "glyph-7003"
    r = invoke(app, "verify", "-m", tiny_model_dir, "-g", g, "glyph-7003", "glyph:7003",
               "--key-file", key_file, "--json", "--no-threshold")
    assert r.exit_code in (0, 1) and json.loads(r.output)["label"] == "glyph-7003"
    r = invoke(app, "stats", "-g", g, "--key-file", key_file, "--json")
    assert r.exit_code == 0, r.output
    info = json.loads(r.output)
    assert info["encrypted"] is True and info["classes"] == 12
    r = invoke(app, "gallery", "check", "-g", g, "--key-file", key_file, "--json")
    assert r.exit_code == 0 and json.loads(r.output)["ok"]


def test_calibrate_evaluate_erase_with_key_file(app, tiny_model_dir, encrypted, tmp_path):
    src, key_file = encrypted
    g = tmp_path / "copy"
    with Gallery.open(src, key=key_file) as s, Gallery.open(g, dim=s.dim, key=key_file) as d:
        d.enroll_many((lb, s.templates(lb)) for lb in s.labels())
    r = invoke(app, "calibrate", "-m", tiny_model_dir, "-g", g, "--non-mated", "glyphs:8000-8020",
               "--target-fpir", "0.25", "--key-file", key_file, "--json")
    assert r.exit_code == 0, r.output
    r = invoke(app, "evaluate", "-m", tiny_model_dir, "-g", g, "--mated", "glyphs:7000-7012",
               "--non-mated", "glyphs:9000-9020", "--key-file", key_file, "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)["mated_searches"] == 12
    r = invoke(app, "erase", "-g", g, "glyph-7003", "--key-file", key_file, "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)["gallery_classes"] == 11
    r = invoke(app, "erase", "-g", g, "glyph-7004")  # no key: refused, nothing erased
    assert isinstance(r.exception, EncryptionKeyError)
    with Gallery.open(g, key=key_file) as check:
        assert len(check) == 11


@pytest.mark.parametrize("case, message", [
    ("none", "the gallery is encrypted; configure its key"),
    ("wrong", "wrong key for this encrypted gallery"),
    ("missing", "cannot read key file"),
    ("garbage", "a gallery key must be 32 bytes"),
])
def test_identify_without_or_with_a_bad_key_fails_clearly(app, tiny_model_dir, encrypted, tmp_path,
                                                          case, message):
    g, _ = encrypted
    args = ["identify", "-m", tiny_model_dir, "-g", g, "glyph:7003"]
    if case == "wrong":
        (tmp_path / "k").write_text(generate_key().hex())
    elif case == "garbage":
        (tmp_path / "k").write_bytes(b"not a key at all\n")
    if case != "none":
        args += ["--key-file", tmp_path / "k"]
    r = invoke(app, *args)
    assert r.exit_code != 0
    assert isinstance(r.exception, EncryptionKeyError) and message in str(r.exception)


def test_console_entry_point_prints_one_line_not_a_traceback(monkeypatch, capsys, tiny_model_dir,
                                                             encrypted, tmp_path):
    g, _ = encrypted
    (tmp_path / "k").write_text(generate_key().hex())
    for extra, message in (([], "configure its key"), (["--key-file", str(tmp_path / "k")], "wrong key"),
                           (["--key-file", str(tmp_path / "absent")], "cannot read key file")):
        monkeypatch.setattr(sys, "argv", ["megaclass", "identify", "-m", str(tiny_model_dir), "-g", str(g),
                                          "glyph:7003", *extra])
        with pytest.raises(SystemExit) as exit_info:
            cli.main()
        assert exit_info.value.code == 2
        err = capsys.readouterr().err
        assert "error:" in err and message in err and "Traceback" not in err


def test_templates_are_not_stored_in_clear(encrypted):
    g, key_file = encrypted
    with Gallery.open(g, key=key_file) as gal:
        templates = np.concatenate([gal.templates(lb) for lb in gal.labels()]).astype(np.float32)
    assert len(templates) == 12  # one template per class (the mean of its samples)
    blobs = [p.read_bytes() for p in g.iterdir() if p.is_file()]
    for row in templates:
        needle = row.tobytes()[:32]
        assert not any(needle in b for b in blobs)


def test_keys_add_creates_an_encrypted_gallery(app, tiny_model_dir, tmp_path):
    key_file = tmp_path / "k"
    key_file.write_bytes(generate_key())  # raw 32 bytes is a valid key file too
    r = invoke(app, "keys", "add", "-g", tmp_path / "g", "-m", tiny_model_dir, "--role", "admin",
               "--key-file", key_file, "--json")
    assert r.exit_code == 0, r.output
    with Gallery.open(tmp_path / "g", key=key_file) as gal:
        assert gal.stats()["encrypted"] is True
    with pytest.raises(EncryptionKeyError, match="configure its key"):
        Gallery.open(tmp_path / "g")


def test_create_app_serves_an_encrypted_gallery(tiny_model_dir, encrypted, tmp_path):
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from megaclass.models import Encoder
    from megaclass.serve import create_app

    g = tmp_path / "served"
    key_file = tmp_path / "k"
    key_file.write_text(generate_key().hex())
    app = create_app(tiny_model_dir, g, key=key_file)
    token = app.state.service.keys.add("test", "enroller")[1]
    headers = {"Authorization": f"Bearer {token}"}
    dim = Encoder.load(tiny_model_dir).dim
    with TestClient(app) as client:
        v = np.eye(dim)[:2].tolist()
        r = client.post("/v1/classes/from-vectors", headers=headers, json={"label": "vec", "vectors": v})
        assert r.status_code == 201, r.text
        r = client.post("/v1/identify/vectors", headers=headers, json={"vectors": [v[1]], "k": 1},
                        params={"no_threshold": True})
        assert r.status_code == 200 and r.json()["results"][0]["label"] == "vec"
    with Gallery.open(g, key=key_file) as gal:
        assert gal.stats()["encrypted"] is True and gal.labels() == ["vec"]
    with pytest.raises(EncryptionKeyError, match="wrong key"):
        create_app(tiny_model_dir, g, key=generate_key())


def test_serve_with_a_wrong_key_file_stops_before_listening(app, tiny_model_dir, encrypted, tmp_path):
    g, _ = encrypted
    (tmp_path / "k").write_text(generate_key().hex())
    r = invoke(app, "serve", "-m", tiny_model_dir, "-g", g, "--port", "1", "--key-file", tmp_path / "k")
    assert r.exit_code != 0
    assert isinstance(r.exception, EncryptionKeyError) and "wrong key" in str(r.exception)
