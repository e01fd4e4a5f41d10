"""Safe defaults and hostile inputs at the gallery, Python and CLI level (issue 12, parts 4-5).

Each test pins one defect that was found by probing megaclass as an attacker or a careless
operator would; the HTTP side of the same defects is in ``test_service_hardening.py``.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import numpy as np
import pytest

from megaclass.errors import EncryptionKeyError, InvalidInputError
from megaclass.gallery import Gallery
from megaclass.gallery.crypto import generate_key

ROOT = Path(__file__).resolve().parents[1]
DIM = 8


def _unit(seed: int, n: int = 1) -> np.ndarray:
    v = np.random.default_rng(seed).normal(size=(n, DIM))
    return (v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float32)


def run_cli(*args, check=False):
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    return subprocess.run([sys.executable, "-m", "megaclass.cli", *map(str, args)],
                          capture_output=True, text=True, env=env, timeout=300, check=check)


# ---------------------------------------------------------------- vectors whose norm overflows
@pytest.mark.parametrize("value", [1e300, -1e200, 1e-320, 3e38])
def test_vectors_whose_norm_overflows_or_underflows_are_normalised_safely(tmp_path, value):
    """``[1e300] * D`` used to be stored as an all-zero template (its float64 norm is inf),
    after which ``gallery check`` failed; subnormal rows were refused as "zero vectors"."""
    with Gallery.open(tmp_path / "g", dim=DIM) as g:
        g.enroll("big", [value] * DIM)
        g.enroll_many([("big2", np.full((2, DIM), value))])
        g.add_templates("big", np.full(DIM, value, dtype=np.float32 if value == 3e38 else np.float64))
        expected = np.full(DIM, np.sign(value) / np.sqrt(DIM), np.float32)
        for label in ("big", "big2"):
            assert np.allclose(g.templates(label), expected, atol=1e-6)
        best = g.search([value] * DIM, k=1)[0][0]
        assert best.score == pytest.approx(1.0, abs=1e-5)
        assert g.check()["ok"], g.check()["problems"]


@pytest.mark.parametrize("bad", [[0.0] * DIM, [float("nan")] + [1.0] * (DIM - 1),
                                 [float("inf")] + [1.0] * (DIM - 1)])
def test_zero_nan_and_inf_vectors_are_still_refused(tmp_path, bad):
    with Gallery.open(tmp_path / "g", dim=DIM) as g:
        with pytest.raises(InvalidInputError, match="zero|NaN|inf"):
            g.enroll("x", bad)
        assert len(g) == 0


# ---------------------------------------------------------------- control characters in labels
@pytest.mark.parametrize("label", ["a\nb", "a\rb", "tab\there", "nul\x00", "bell\x07", "del\x7f",
                                   "c1\x85"])
def test_labels_with_control_characters_are_refused(tmp_path, label):
    """Such labels could be enrolled but never fetched or erased over HTTP."""
    with Gallery.open(tmp_path / "g", dim=DIM) as g:
        with pytest.raises(InvalidInputError, match="control character"):
            g.enroll(label, _unit(1))
        with pytest.raises(InvalidInputError, match="control character"):
            g.enroll_many([("fine", _unit(2)), (label, _unit(3))])
        assert len(g) == 0
        g.enroll("ünïcödé label with spaces", _unit(4))  # printable non-ASCII stays allowed
        assert len(g) == 1


def test_cli_refuses_a_label_with_a_newline(tiny_model_dir, tmp_path):
    proc = run_cli("enroll", "-m", tiny_model_dir, "-g", tmp_path / "g", "bad\nlabel", "glyph:1")
    assert proc.returncode == 2, proc.stderr
    assert "control character" in proc.stderr and "Traceback" not in proc.stderr


# ---------------------------------------------------------------- read-only gallery directory
_READER = textwrap.dedent("""
    import json, sys
    import numpy as np
    from megaclass.errors import MegaclassError
    from megaclass.gallery import Gallery
    DIM = %d
    out = {}
    g = Gallery.open(sys.argv[1])
    out["read_only"] = g.read_only
    out["labels"] = g.labels()
    out["best"] = g.search(np.eye(DIM)[:1], k=1)[0][0].label
    for name, write in (("enroll", lambda: g.enroll("new", np.eye(DIM)[:1])),
                        ("erase", lambda: g.erase("a")), ("save", g.save)):
        try:
            write()
            out[name] = "no error"
        except MegaclassError as exc:
            out[name] = type(exc).__name__ + ": " + str(exc)
    g.close()
    try:
        from megaclass.serve.db import ServiceDB
        ServiceDB(sys.argv[1]).close()
        out["service"] = "no error"
    except MegaclassError as exc:
        out["service"] = type(exc).__name__ + ": " + str(exc)
    except ImportError:
        out["service"] = "ReadOnlyGalleryError: read-only (no fastapi)"
    print(json.dumps(out))
""").replace("%d", str(DIM))


def _as_nobody(args: list[str]) -> subprocess.CompletedProcess:
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONPATH": str(ROOT / "src"),
           "HOME": "/tmp"}
    return subprocess.run(["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", *args],
                          capture_output=True, text=True, env=env, timeout=120)


@pytest.fixture()
def read_only_gallery():
    """A gallery in a directory nobody may write, and a way to run commands as ``nobody``
    (root ignores permission bits, so the reader must be unprivileged)."""
    if shutil.which("setpriv") is None:
        pytest.skip("setpriv is not available to run a reader without privileges")
    base = Path(tempfile.mkdtemp(prefix="megaclass-ro-"))
    try:
        base.chmod(0o755)
        path = base / "g"
        with Gallery.open(path, dim=DIM) as g:
            g.enroll("a", np.eye(DIM)[:1])
            g.enroll("b", np.eye(DIM)[1:2])
        probe = _as_nobody([sys.executable, "-c", f"import os; print(os.access({str(path)!r}, os.W_OK))"])
        if probe.returncode != 0:
            pytest.skip(f"cannot run as nobody: {probe.stderr.strip()[:200]}")
        for p in [path, *path.iterdir()]:
            p.chmod(p.stat().st_mode & ~0o222)
        before = sorted((p.name, p.stat().st_mtime_ns) for p in path.iterdir())
        yield path, before
    finally:
        for p in base.rglob("*"):
            p.chmod(p.stat().st_mode | 0o200)
        shutil.rmtree(base, ignore_errors=True)


def test_read_only_gallery_opens_for_reads_and_refuses_writes_in_one_line(read_only_gallery):
    """Reads failed as "not a megaclass gallery"; writes ended in EROFS / sqlite3 tracebacks."""
    path, before = read_only_gallery
    proc = _as_nobody([sys.executable, "-c", _READER, str(path)])
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["read_only"] is True and out["labels"] == ["a", "b"] and out["best"] == "a"
    for name in ("enroll", "erase", "save", "service"):
        assert out[name].startswith("ReadOnlyGalleryError") and "read-only" in out[name], out
    assert sorted((p.name, p.stat().st_mtime_ns) for p in path.iterdir()) == before


def test_cli_on_a_read_only_gallery(read_only_gallery):
    path, _ = read_only_gallery
    cli = [sys.executable, "-m", "megaclass.cli"]
    stats = _as_nobody([*cli, "stats", "-g", str(path), "--json"])
    assert stats.returncode == 0, stats.stderr
    assert json.loads(stats.stdout)["classes"] == 2
    erase = _as_nobody([*cli, "erase", "-g", str(path), "a"])
    assert erase.returncode == 2, erase.stderr
    assert "read-only" in erase.stderr and "Traceback" not in erase.stderr
    assert len(erase.stderr.strip().splitlines()) == 1


# ---------------------------------------------------------------- tampered ciphertext
def test_tampered_ciphertext_behind_a_snapshot_is_what_the_readme_says(tmp_path):
    """With a current snapshot, identify searches the (authenticated) snapshot and does not
    decrypt the store's rows; a tampered row is caught where it is decrypted: verify and
    templates of its class, ``gallery check``, and any index rebuild. README says so."""
    key = generate_key()
    path = tmp_path / "enc"
    with Gallery.open(path, dim=DIM, key=key) as g:
        g.enroll("a", _unit(1))
        g.enroll("b", _unit(2))
    conn = sqlite3.connect(path / "gallery.db")
    tid, blob = conn.execute("SELECT id, vector FROM templates ORDER BY id LIMIT 1").fetchone()
    blob = bytearray(blob)
    blob[20] ^= 0xFF
    conn.execute("UPDATE templates SET vector = ? WHERE id = ?", (bytes(blob), tid))
    conn.commit()
    conn.close()
    with Gallery.open(path, key=key) as g:
        assert g.search(_unit(1), k=1)[0][0].label == "a"  # served from the sealed snapshot
        with pytest.raises(EncryptionKeyError, match="altered"):
            g.templates("a")
        report = g.check()
        assert not report["ok"] and any("cannot be read" in p for p in report["problems"])
    readme = (ROOT / "README.md").read_text()
    assert "tampered" in readme and "gallery check" in readme


# ---------------------------------------------------------------- part 4: no silent accept
def _glyph_gallery(tiny_encoder, path):
    from megaclass import GlyphSource, Recognizer

    rec = Recognizer(tiny_encoder, path)
    rec.enroll("seven", GlyphSource.samples(7, n=3))
    rec.enroll("eight", GlyphSource.samples(8, n=3))
    return rec


def test_an_uncalibrated_recognizer_refuses_to_decide_unless_told_how(tiny_encoder, tmp_path):
    """Identify and verify on a never-calibrated gallery accepted every probe (threshold None)."""
    import torch

    from megaclass import GlyphSource, Recognizer
    from megaclass.errors import NotCalibratedError

    rec = _glyph_gallery(tiny_encoder, tmp_path / "g")
    noise = torch.rand(1, 1, 32, 32, generator=torch.Generator().manual_seed(0))
    probe = GlyphSource.samples(7, n=1, seed=5)
    assert not rec.calibrated
    with pytest.raises(NotCalibratedError, match="calibrate"):
        rec.identify(noise)
    with pytest.raises(NotCalibratedError, match="calibrate"):
        rec.identify_vectors(np.ones((1, 32)))
    with pytest.raises(NotCalibratedError, match="calibrate"):
        rec.verify(noise, "seven")
    only = rec.identify(probe, threshold=None)[0]  # candidates only, asked for explicitly
    assert only.label == only.candidates[0].label == "seven"
    assert rec.identify(noise, threshold=0.9999)[0].label is None
    assert rec.verify(noise, "seven", threshold=0.9999).accepted is False
    assert rec.verify(noise, "seven", threshold=None).threshold is None
    fixed = Recognizer(tiny_encoder, rec.gallery, threshold=0.9999)  # a threshold given up front
    assert fixed.calibrated and fixed.identify(noise)[0].label is None
    with pytest.raises(Exception, match="finite number"):
        rec.identify(probe, threshold=float("nan"))
    rec.close()


def test_calibrate_refuses_too_few_non_mated_searches(tiny_encoder, tmp_path):
    """A 1 % FPIR "calibrated" on 50 searches rests on no false positive at all."""
    rec = _glyph_gallery(tiny_encoder, tmp_path / "g")
    rng = np.random.default_rng(0)
    with pytest.raises(InvalidInputError, match=r"at least 1,000 non-mated searches.*got 50.*"
                                                r"95% confidence interval of 0\.0000-0\.07"):
        rec.calibrate_vectors(rng.normal(size=(50, 32)), target_fpir=0.01)
    assert not rec.calibrated and rec.gallery.get_setting("threshold") is None
    with pytest.warns(UserWarning, match="at least 1,000"):
        rec.calibrate_vectors(rng.normal(size=(50, 32)), 0.01, allow_few=True, save=False)
    cal = rec.calibrate_vectors(rng.normal(size=(1000, 32)), 0.01)
    assert cal.n_non_mated == 1000 and rec.gallery.get_setting("threshold") == cal.threshold
    rec.close()


def test_cli_safe_defaults(tiny_model_dir, tmp_path):
    """Uncalibrated identify/verify refuse; --no-threshold; errors name flags and follow --json;
    calibrate says how many non-mated searches it needs; --version."""
    g = tmp_path / "g"
    run_cli("enroll", "-m", tiny_model_dir, "-g", g, "--from", "glyphs:7000-7003", "--per-class", "2",
            check=True)
    proc = run_cli("identify", "-m", tiny_model_dir, "-g", g, "glyph:7001")
    assert proc.returncode == 2 and "calibrate" in proc.stderr and "--no-threshold" in proc.stderr
    proc = run_cli("verify", "-m", tiny_model_dir, "-g", g, "glyph-7001", "glyph:7001", "--json")
    assert proc.returncode == 2
    assert json.loads(proc.stdout)["error"] == "NotCalibratedError"
    out = json.loads(run_cli("identify", "-m", tiny_model_dir, "-g", g, "glyph:7001", "--no-threshold",
                             "--json", check=True).stdout)
    assert out["threshold"] is None and out["results"][0]["label"] == "glyph-7001"
    proc = run_cli("identify", "-m", tiny_model_dir, "-g", g, "glyph:7001", "--no-threshold",
                   "--threshold", "0.5")
    assert proc.returncode == 2 and "--threshold or --no-threshold" in proc.stderr
    proc = run_cli("enroll", "-m", tiny_model_dir, "-g", g, "glyph-7001", "glyph:7001")
    assert proc.returncode == 2 and "--replace" in proc.stderr and "replace=True" not in proc.stderr
    proc = run_cli("calibrate", "-m", tiny_model_dir, "-g", g, "--non-mated", "glyphs:9000-9010",
                   "--target-fpir", "0.01")
    assert proc.returncode == 2 and "at least 1,000" in proc.stderr and "--allow-few" in proc.stderr
    proc = run_cli("--version", check=True)
    assert proc.stdout.startswith("megaclass ")
