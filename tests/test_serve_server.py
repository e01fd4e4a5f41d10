"""A real `megaclass serve` process on a free loopback port, driven with httpx; the load test."""

from __future__ import annotations

import httpx
import pytest

pytest.importorskip("uvicorn")
from _serve_helpers import files, glyph_pngs  # noqa: E402
from megaclass.serve.db import ServiceDB  # noqa: E402
from megaclass.serve.keys import KeyStore  # noqa: E402
from megaclass.serve.process import ServerProcess  # noqa: E402


@pytest.mark.slow
def test_real_server_enroll_identify_erase_restart(tiny_model_dir, tmp_path):
    from megaclass import Encoder, Gallery

    gallery = tmp_path / "g"
    Gallery.open(gallery, dim=Encoder.load(tiny_model_dir).dim).close()
    with ServiceDB(gallery) as db:
        token = KeyStore(db).add("e2e", "enroller")[1]
    h = {"Authorization": f"Bearer {token}"}
    log = tmp_path / "server.log"
    with ServerProcess(tiny_model_dir, gallery, log=log) as server:
        assert server.url.startswith("http://127.0.0.1:")
        with httpx.Client(base_url=server.url, headers=h, timeout=30) as http:
            for c in (31, 32, 33):
                r = http.post("/v1/classes", data={"label": f"c{c}"}, files=files(glyph_pngs(c, 3)))
                assert r.status_code == 201, r.text
            r = http.post("/v1/identify", files=files(glyph_pngs(32, 1, seed=4)),
                          params={"no_threshold": True})
            assert r.json()["results"][0]["label"] == "c32"
            assert http.delete("/v1/classes/c31").status_code == 200
            assert 'route="/v1/identify",status="200"' in http.get("/metrics").text
    assert server.proc is None  # stopped (SIGTERM: graceful shutdown)
    assert "the gallery is not calibrated" in log.read_text()  # said at start, with the way out

    with ServerProcess(tiny_model_dir, gallery, log=log) as server:  # restart: the data is still there
        with httpx.Client(base_url=server.url, headers=h, timeout=30) as http:
            assert http.get("/v1/classes").json() == {"total": 2, "labels": ["c32", "c33"]}
            r = http.post("/v1/identify", files=files(glyph_pngs(33, 1, seed=4)),
                          params={"no_threshold": True})
            assert r.json()["results"][0]["label"] == "c33"
            assert http.get("/v1/classes/c31").status_code == 404
    with ServiceDB(gallery) as db:
        from megaclass.serve.audit import AuditLog

        ops = [r["operation"] for r in AuditLog(db).query(limit=100)][::-1]
    assert ops == ["enroll"] * 3 + ["identify", "erase", "identify"]


@pytest.mark.slow
def test_load_short(tiny_model_dir, capsys):
    """8 concurrent clients mixing identify and enroll for ~5 s: zero errors."""
    from megaclass.serve.loadtest import run_against_server

    report = run_against_server(tiny_model_dir, duration=5, clients=8, identify_share=0.8, classes=50)
    with capsys.disabled():
        print("\n" + report["summary"])
    assert report["all"]["errors"] == 0
    assert report["identify"]["requests"] > 0 and report["enroll"]["requests"] > 0
    assert report["all"]["p99_ms"] >= report["all"]["p50_ms"] > 0
