"""Encryption at rest, erasure that reaches the disk, integrity check, export/import."""

import os
import sqlite3
import subprocess
import sys

import numpy as np
import pytest

from megaclass.errors import EncryptionKeyError, InvalidInputError
from megaclass.gallery import Gallery
from megaclass.gallery.crypto import generate_key

DIM = 16


def _vectors(seed: int, n: int = 3) -> np.ndarray:
    v = np.random.default_rng(seed).normal(size=(n, DIM)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def _files_contain(directory, needle: bytes) -> list[str]:
    return [p.name for p in directory.iterdir() if p.is_file() and needle in p.read_bytes()]


def _fill(g: Gallery, n: int = 20) -> None:
    g.enroll_many((f"c{i}", _vectors(i)) for i in range(n))


def test_encrypted_gallery_round_trip_and_no_clear_bytes(tmp_path):
    key = generate_key()
    path = tmp_path / "enc"
    with Gallery.open(path, dim=DIM, key=key) as g:
        _fill(g)
        assert g.stats()["encrypted"]
    v = _vectors(7)
    for row in v:  # no template is stored in clear, in the db or the snapshot
        assert _files_contain(path, row.tobytes()[:32]) == []
    with Gallery.open(path, key=key) as g:  # snapshot decrypts and is reused
        assert g.search(v[0], k=1)[0][0].label == "c7"
        assert np.allclose(g.templates("c7"), v, atol=1e-6)
        assert g.check()["ok"]


def test_wrong_or_missing_key_is_a_clear_error(tmp_path, monkeypatch):
    path = tmp_path / "enc"
    with Gallery.open(path, dim=DIM, key=generate_key()) as g:
        _fill(g, 3)
    with pytest.raises(EncryptionKeyError, match="encrypted; configure its key"):
        Gallery.open(path)
    with pytest.raises(EncryptionKeyError, match="wrong key"):
        Gallery.open(path, key=generate_key())
    monkeypatch.setenv("MEGACLASS_GALLERY_KEY", generate_key().hex())
    with pytest.raises(EncryptionKeyError, match="wrong key"):
        Gallery.open(path)
    with pytest.raises(EncryptionKeyError, match="32 bytes"):
        Gallery.open(path, key=b"short")


def test_key_from_file_and_environment(tmp_path, monkeypatch):
    key = generate_key()
    key_file = tmp_path / "gallery.key"
    key_file.write_text(key.hex())
    with Gallery.open(tmp_path / "g", dim=DIM, key=key_file) as g:
        _fill(g, 2)
    monkeypatch.setenv("MEGACLASS_GALLERY_KEY_FILE", str(key_file))
    with Gallery.open(tmp_path / "g") as g:
        assert len(g) == 2
    monkeypatch.delenv("MEGACLASS_GALLERY_KEY_FILE")
    with pytest.raises(EncryptionKeyError, match="stores templates in clear"):
        Gallery.open(tmp_path / "clear", dim=DIM).close() or Gallery.open(tmp_path / "clear", key=key)


def test_tampered_ciphertext_is_detected(tmp_path):
    key = generate_key()
    path = tmp_path / "enc"
    with Gallery.open(path, dim=DIM, key=key) as g:
        _fill(g, 3)
    conn = sqlite3.connect(path / "gallery.db")
    blob = bytearray(conn.execute("SELECT vector FROM templates LIMIT 1").fetchone()[0])
    blob[20] ^= 0xFF
    conn.execute("UPDATE templates SET vector = ? WHERE id = (SELECT MIN(id) FROM templates)",
                 (bytes(blob),))
    conn.commit()
    conn.close()
    (path / "index.json").unlink()  # force a rebuild from the store
    with pytest.raises(EncryptionKeyError, match="altered"):
        Gallery.open(path, key=key)


def test_erased_vectors_leave_every_file_after_compact(tmp_path):
    path = tmp_path / "g"
    with Gallery.open(path, dim=DIM) as g:
        _fill(g)
        g.save()
        secret = g.templates("c5")
        needles = [row.tobytes()[:32] for row in secret]
        assert any(_files_contain(path, n) for n in needles)  # the check can fail
        g.erase("c5")
        g.compact()
        assert g.check()["ok"]
    for n in needles:
        assert _files_contain(path, n) == [], "erased template bytes still on disk"
    with Gallery.open(path) as g:
        assert "c5" not in g and len(g) == 19


def test_auto_compaction_after_many_erasures(tmp_path, monkeypatch):
    monkeypatch.setattr(Gallery, "auto_compact_after", 3)
    with Gallery.open(tmp_path / "g", dim=DIM) as g:
        _fill(g, 6)
        needle = g.templates("c0")[0].tobytes()[:32]
        for label in ("c0", "c1", "c2"):
            g.erase(label)
        assert _files_contain(tmp_path / "g", needle) == []


def test_check_reports_a_damaged_store(tmp_path):
    path = tmp_path / "g"
    with Gallery.open(path, dim=DIM) as g:
        _fill(g, 4)
    conn = sqlite3.connect(path / "gallery.db")
    conn.execute("PRAGMA foreign_keys=OFF")
    conn.execute("DELETE FROM classes WHERE label = 'c1'")
    conn.commit()
    conn.close()
    with Gallery.open(path) as g:
        report = g.check()
    assert not report["ok"]
    assert any("belong to no class" in p for p in report["problems"])


def test_export_import_round_trip(tmp_path):
    key = generate_key()
    with Gallery.open(tmp_path / "src", dim=DIM, key=key) as g:
        _fill(g, 10)
        g.enroll("meta-class", _vectors(99, 2), {"team": "red"})
        g.set_setting("threshold", 0.42)
        g.export(tmp_path / "exp")
        expected = {label: g.templates(label) for label in g.labels()}
    assert not any(p.suffix == ".pkl" for p in (tmp_path / "exp").iterdir())
    with Gallery.import_from(tmp_path / "exp", tmp_path / "dst") as h:
        assert sorted(h.labels()) == sorted(expected)
        for label, vecs in expected.items():
            np.testing.assert_allclose(h.templates(label), vecs, atol=1e-6)
        assert h.class_meta("meta-class") == {"team": "red"}
        assert h.get_setting("threshold") == 0.42
    with pytest.raises(InvalidInputError, match="not a readable gallery export"):
        Gallery.import_from(tmp_path / "nothing", tmp_path / "dst2")


def test_erase_scrubs_the_label_from_the_op_log(tmp_path):
    path = tmp_path / "g"
    with Gallery.open(path, dim=DIM) as g:
        g.enroll("alice-smith", _vectors(1))
        g.add_templates("alice-smith", _vectors(2, 1))
        g.erase("alice-smith")
        g.compact()
    conn = sqlite3.connect(path / "gallery.db")
    labels = [r[0] for r in conn.execute("SELECT label FROM ops")]
    conn.close()
    assert len(labels) == 3 and all(lab.startswith("erased:") for lab in labels)
    assert not _files_contain(path, b"alice-smith")


START_TIMEOUT_S = 120  # for a writer subprocess's first acknowledged enroll


@pytest.mark.slow
def test_crash_safety_under_sigkill(tmp_path):
    """A writer enrolls and acknowledges each commit; SIGKILL it at random moments."""
    from megaclass.gallery import Gallery as G

    path = tmp_path / "crash"
    G.open(path, dim=DIM).close()
    writer = (
        "import sys, numpy as np\n"
        "from megaclass.gallery import Gallery\n"
        "g = Gallery.open(sys.argv[1])\n"
        "start = int(sys.argv[2]); rng = np.random.default_rng(start)\n"
        "for i in range(start, start + 100000):\n"
        "    v = rng.normal(size=(3, DIM)).astype('float32')\n"
        "    g.enroll(f'k{i}', v)\n"
        "    print(f'ACK k{i}', flush=True)\n"
        "    if i % 7 == 0:\n"
        "        print(f'ERASING k{i}', flush=True); g.erase(f'k{i}'); print(f'ERASED k{i}', flush=True)\n"
    ).replace("DIM", str(DIM))
    import select
    import time

    rng = np.random.default_rng(0)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    acked, erasing, erased, cycles, next_id = set(), set(), set(), 0, 0
    for _ in range(50):
        proc = subprocess.Popen([sys.executable, "-c", writer, str(path), str(next_id)],
                                stdout=subprocess.PIPE, text=True, env=env)
        # Kill only once the writer is enrolling: starting it (Python, numpy, the gallery) takes
        # ~4 s on a loaded box, and a fixed delay then killed writers that had acknowledged nothing.
        lines = []
        started = time.monotonic() + START_TIMEOUT_S
        while not lines and time.monotonic() < started:
            if select.select([proc.stdout], [], [], 0.5)[0]:
                line = proc.stdout.readline()
                if not line:
                    break  # the writer exited
                lines.append(line.split())  # its first line is always the ACK of an enroll
        if not lines:
            proc.kill()
            proc.wait()
            pytest.fail(f"writer {cycles} acknowledged no enroll within {START_TIMEOUT_S} s "
                        f"(exit code {proc.returncode})")
        deadline = time.monotonic() + float(rng.uniform(0, 0.5))  # then a random moment
        while time.monotonic() < deadline:
            ready, _, _ = select.select([proc.stdout], [], [], 0.05)
            if ready:
                line = proc.stdout.readline()
                if not line:
                    break
                lines.append(line.split())
        proc.kill()
        rest = proc.stdout.read()  # acks written before the kill still count
        proc.wait()
        lines += [line.split() for line in rest.splitlines()]
        for kind, label in lines:
            {"ACK": acked, "ERASING": erasing, "ERASED": erased}[kind].add(label)
        next_id += 100000
        cycles += 1
        with G.open(path) as g:
            present = set(g.labels())
            # an erase that started but was not acknowledged may or may not have committed
            assert acked - erasing <= present, "an acknowledged enroll was lost"
            assert not (erased & present), "an acknowledged erase came back"
            for label in list(present)[:50]:
                assert len(g.templates(label)) == 3, f"{label} is half-present"
            report = g.check()
            assert report["ok"], report["problems"]
            if present:
                some = next(iter(present))
                assert g.search(g.templates(some)[0], k=1)[0][0].label == some
    assert cycles >= 50 and len(acked) > 50
