"""Erasure at the file level on a real Milvus server: after ``erase`` and ``compact`` the
erased templates' bytes leave Milvus's segment files (insert logs, stats, indexes) once
its garbage collector drops the compacted segments (``dataCoord.gc.dropTolerance``, 1 s
here instead of 3 h). The write-ahead log (rocksmq on a standalone server) is the
exception: it keeps them until its retention expires, which this test does not wait for
(README: "Erasure")."""

from __future__ import annotations

import time

import numpy as np
import pytest

pytest.importorskip("milvus")
pytest.importorskip("pymilvus")

from _milvus_server import MilvusProcess  # noqa: E402
from megaclass.gallery.milvus import MilvusGallery  # noqa: E402

WAL = "rocksmq"  # data/rocksmq: the standalone server's write-ahead log (+ rocksmq_meta_kv)


def _files_with(root, needle: bytes, *, wal: bool) -> list[str]:
    out = []
    for f in (root / "data").rglob("*"):
        in_wal = any(p.startswith(WAL) for p in f.relative_to(root / "data").parts[:1])
        if f.is_file() and in_wal == wal and needle in f.read_bytes():
            out.append(str(f.relative_to(root)))
    return out


def test_erased_templates_leave_the_segment_files(tmp_path):
    server = MilvusProcess(tmp_path / "milvus", **{"dataCoord.gc.interval": 2,
                                                   "dataCoord.gc.dropTolerance": 1})
    server.start()
    try:
        rng = np.random.default_rng(0)
        x = rng.normal(size=(40, 32)).astype(np.float32)
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        with MilvusGallery.open(f"{server.uri_base}/erasure?timeout=60", dim=32) as g:
            g.enroll_many([(f"c{i}", x[2 * i: 2 * i + 2]) for i in range(20)])
            g.link.call("flush", g.link.client.flush, g.name)  # into segment files
            needle = g.templates("c5")[0].tobytes()[:32]
            deadline = time.monotonic() + 60
            while not _files_with(server.base, needle, wal=False):  # the check can fail
                assert time.monotonic() < deadline, "the template never reached a segment file"
                time.sleep(1)
            g.erase("c5")
            report = g.compact()
            assert report["compaction"] == "Completed" and report["live_templates"] == 38
            deadline = time.monotonic() + 90
            while found := _files_with(server.base, needle, wal=False):
                assert time.monotonic() < deadline, f"erased template still in {found}"
                time.sleep(2)
            assert "c5" not in g and len(g) == 19 and g.check()["ok"]
            wal = _files_with(server.base, needle, wal=True)
        print(f"\nerased template: gone from the segment files; in the write-ahead log: {wal}")
    finally:
        server.stop()
