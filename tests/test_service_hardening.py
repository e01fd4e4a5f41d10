"""The HTTP service probed as an attacker or a careless operator would (issue 12, parts 4-5).

Real app, real SQLite, no mocks; the one fault injected (an internal error) is a plain
function swapped on the live recognizer, since no valid request should cause one.
"""

from __future__ import annotations

import re

import numpy as np
import pytest

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

from _serve_helpers import files, glyph_pngs  # noqa: E402
from megaclass.gallery import Gallery  # noqa: E402
from megaclass.recognizer import Recognizer  # noqa: E402
from megaclass.serve import Limits, create_app  # noqa: E402

DIM = 32  # the tiny encoder's


def _tokens(svc):
    return {role: svc.keys.add(f"test-{role}", role)[1] for role in ("reader", "enroller", "admin")}


@pytest.fixture()
def served(tiny_encoder, tmp_path):
    app = create_app(tiny_encoder, tmp_path / "g", limits=Limits(max_images=8, max_vectors=16))
    svc = app.state.service
    tokens = _tokens(svc)
    with TestClient(app, raise_server_exceptions=False) as client:
        yield client, tokens, svc


def auth(tokens, role):
    return {"Authorization": f"Bearer {tokens[role]}"}


def audit_rows(client, tokens, **params):
    r = client.get("/v1/audit", headers=auth(tokens, "admin"), params={"limit": 1000, **params})
    assert r.status_code == 200, r.text
    return r.json()["rows"]


# ---------------------------------------------------------------- vectors whose norm overflows
def test_from_vectors_with_a_norm_that_overflows_stores_a_unit_template(served):
    """``[1e300] * D`` was acknowledged with 201 and stored as an all-zero template."""
    client, tokens, svc = served
    r = client.post("/v1/classes/from-vectors", headers=auth(tokens, "enroller"),
                    json={"label": "huge", "vectors": [[1e300] * DIM]})
    assert r.status_code == 201, r.text
    r = client.post("/v1/classes/huge/templates", headers=auth(tokens, "enroller"),
                    json={"vectors": [[-1e300] + [1e300] * (DIM - 1)]})
    assert r.status_code == 200, r.text
    assert np.allclose(np.linalg.norm(svc.gallery.templates("huge"), axis=1), 1.0, atol=1e-5)
    r = client.post("/v1/identify/vectors?no_threshold=true", headers=auth(tokens, "reader"),
                    json={"vectors": [[1e300] * DIM], "k": 1})
    assert r.status_code == 200, r.text
    best = r.json()["results"][0]["candidates"][0]
    assert best["label"] == "huge" and best["score"] == pytest.approx(1.0, abs=1e-5)
    assert svc.gallery.check()["ok"]


# ---------------------------------------------------------------- control characters in labels
@pytest.mark.parametrize("label", ["line\nbreak", "carriage\rreturn", "nul\x00byte", "esc\x1b[31m"])
def test_labels_with_control_characters_are_refused_by_every_enroll_route(served, label):
    """They could be enrolled but never fetched or erased over HTTP."""
    client, tokens, svc = served
    h = auth(tokens, "enroller")
    r = client.post("/v1/classes/from-vectors", headers=h, json={"label": label, "vectors": [[1.0] * DIM]})
    assert r.status_code == 422 and "control character" in r.json()["message"], r.text
    r = client.post("/v1/classes", headers=h, data={"label": label}, files=files(glyph_pngs(3, 2)))
    assert r.status_code == 422 and "control character" in r.json()["message"], r.text
    assert len(svc.gallery) == 0


# ---------------------------------------------------------------- audit of refused and failed requests
def test_refused_requests_are_audited_with_their_target(served):
    """401s left no row; 403 rows omitted the label the caller went for."""
    client, tokens, svc = served
    vec = {"label": "mallory", "vectors": [[1.0] * DIM]}
    assert client.post("/v1/classes/from-vectors", json=vec).status_code == 401
    bogus = {"Authorization": "Bearer mck_0badc0de.AAAAAAAAAAAAAAAAAAAAAAAAAAAA"}
    assert client.delete("/v1/classes/alice", headers=bogus).status_code == 401
    assert client.get("/v1/classes/alice").status_code == 401
    assert client.delete("/v1/classes/alice", headers=auth(tokens, "reader")).status_code == 403
    r = client.post("/v1/classes", headers=auth(tokens, "reader"), data={"label": "eve"},
                    files=files(glyph_pngs(3, 1)))
    assert r.status_code == 403
    rows = audit_rows(client, tokens)[::-1]
    got = [(r["operation"], r["labels"], r["status"], r["key_id"]) for r in rows]
    reader_id = svc.keys.authenticate(tokens["reader"]).id
    alice = svc.gallery.erased_tag("alice")  # an erase request's label is kept hashed, even refused
    assert got[:5] == [("enroll", ["mallory"], 401, None), ("erase", [alice], 401, None),
                       ("read", ["alice"], 401, None), ("erase", [alice], 403, reader_id),
                       ("enroll", ["eve"], 403, reader_id)]
    assert "0badc0de" in rows[1]["decision"]  # the key id claimed, as a clue (not trusted)


def test_a_request_that_fails_inside_is_a_json_500_audited_without_a_traceback(served):
    """A 500 left no audit row; its body must not leak internals either."""
    client, tokens, svc = served

    def broken(*args, **kwargs):
        raise RuntimeError("internal detail /srv/secret/path")

    svc.recognizer.identify_vectors = broken
    r = client.post("/v1/identify/vectors?no_threshold=true", headers=auth(tokens, "reader"),
                    json={"vectors": [[1.0] * DIM]})
    assert r.status_code == 500
    body = r.json()
    assert body["error"] == "InternalError" and "secret" not in r.text and "Traceback" not in r.text
    rows = audit_rows(client, tokens, operation="identify")
    assert len(rows) == 1, rows
    assert rows[0]["status"] == 500 and rows[0]["decision"] == "error: internal (RuntimeError)"
    assert rows[0]["key_id"] == svc.keys.authenticate(tokens["reader"]).id
    # outside an audited operation (stats only reads): audited by the error handler
    svc.gallery.stats = broken
    r = client.get("/v1/stats", headers=auth(tokens, "reader"))
    assert r.status_code == 500 and "secret" not in r.text
    rows = audit_rows(client, tokens, operation="read")
    assert [(r["status"], r["decision"]) for r in rows] == [(500, "error: internal (RuntimeError)")]


# ---------------------------------------------------------------- read-only gallery
def test_writes_to_a_read_only_gallery_are_503_and_reads_work(tiny_encoder, tmp_path):
    path = tmp_path / "g"
    with Gallery.open(path, dim=DIM) as g:
        g.enroll("a", np.eye(DIM)[:1])
    rec = Recognizer(tiny_encoder, Gallery.open(path, read_only=True), threshold=0.5)
    app = create_app(rec)
    tokens = _tokens(app.state.service)
    with TestClient(app, raise_server_exceptions=False) as client:
        h = auth(tokens, "enroller")
        r = client.post("/v1/classes/from-vectors", headers=h, json={"label": "b", "vectors": [[1.0] * DIM]})
        assert r.status_code == 503 and r.json()["error"] == "ReadOnlyGalleryError", r.text
        assert "read-only" in r.json()["message"]
        assert client.delete("/v1/classes/a", headers=h).status_code == 503
        r = client.post("/v1/identify/vectors", headers=auth(tokens, "reader"),
                        json={"vectors": [np.eye(DIM)[0].tolist()]})
        assert r.status_code == 200 and r.json()["results"][0]["label"] == "a"
        assert [row["status"] for row in audit_rows(client, tokens, operation="enroll")] == [503]


# ---------------------------------------------------------------- part 4: safe defaults over HTTP
def test_an_uncalibrated_service_refuses_decisions_and_says_so(served):
    client, tokens, svc = served
    h = auth(tokens, "reader")
    assert client.post("/v1/classes", headers=auth(tokens, "enroller"), data={"label": "seven"},
                       files=files(glyph_pngs(7, 3))).status_code == 201
    assert client.get("/readyz").json()["calibrated"] is False
    assert client.get("/v1/stats", headers=h).json()["calibrated"] is False
    noise = [np.random.default_rng(0).normal(size=DIM).tolist()]
    r = client.post("/v1/identify/vectors", headers=h, json={"vectors": noise})
    assert r.status_code == 409 and r.json()["error"] == "NotCalibratedError", r.text
    assert "calibrate" in r.json()["message"]
    r = client.post("/v1/identify", headers=h, files=files(glyph_pngs(7, 1, seed=4)))
    assert r.status_code == 409
    r = client.post("/v1/verify", headers=h, data={"label": "seven"},
                    files=files(glyph_pngs(7, 1, seed=4), "file"))
    assert r.status_code == 409
    assert [row["status"] for row in audit_rows(client, tokens, operation="identify")] == [409, 409]
    r = client.post("/v1/identify/vectors", headers=h, params={"threshold": 0.99}, json={"vectors": noise})
    assert r.status_code == 200 and r.json()["threshold"] == 0.99 and r.json()["results"][0]["label"] is None
    r = client.post("/v1/identify/vectors", headers=h, params={"no_threshold": True}, json={"vectors": noise})
    assert r.status_code == 200 and r.json()["results"][0]["label"] == "seven"
    r = client.post("/v1/verify", headers=h, params={"threshold": 0.2}, data={"label": "seven"},
                    files=files(glyph_pngs(7, 1, seed=4), "file"))
    assert r.status_code == 200 and r.json()["threshold"] == 0.2
    svc.gallery.set_setting("threshold", 0.5)
    assert client.get("/readyz").json()["calibrated"] is True
    assert client.get("/v1/stats", headers=h).json()["calibrated"] is True
    assert client.post("/v1/identify/vectors", headers=h, json={"vectors": noise}).status_code == 200


def test_identify_vectors_honours_k_in_the_query(served):
    """``?k=1`` used to be ignored (the body's default 5 won)."""
    client, tokens, svc = served
    for i in range(3):
        svc.gallery.enroll(f"c{i}", np.eye(DIM)[i])
    h = auth(tokens, "reader")
    q = {"vectors": [np.eye(DIM)[0].tolist()]}
    r = client.post("/v1/identify/vectors", headers=h, params={"k": 1, "no_threshold": True}, json=q)
    assert r.status_code == 200 and len(r.json()["results"][0]["candidates"]) == 1
    r = client.post("/v1/identify/vectors", headers=h, params={"no_threshold": True}, json={**q, "k": 2})
    assert len(r.json()["results"][0]["candidates"]) == 2
    r = client.post("/v1/identify/vectors", headers=h, params={"k": 1, "no_threshold": True},
                    json={**q, "k": 2})
    assert r.status_code == 422 and "k given twice" in r.json()["message"]


def test_no_internal_meta_and_no_object_reprs_in_answers(served):
    client, tokens, svc = served
    h = auth(tokens, "enroller")
    r = client.post("/v1/classes", headers=h, data={"label": "m", "meta": '{"site": "x"}'},
                    files=files(glyph_pngs(3, 2)))
    assert r.status_code == 201
    got = client.get("/v1/classes/m", headers=auth(tokens, "reader")).json()
    assert got["meta"] == {"site": "x"} and got["samples"] == 2 and "_sum_norm" not in str(got)
    bad = [("files", ("junk.png", b"this is not an image at all", "image/png"))]
    for r in (client.post("/v1/classes", headers=h, data={"label": "j"}, files=bad),
              client.post("/v1/identify", headers=auth(tokens, "reader"), params={"no_threshold": True},
                          files=bad)):
        assert r.status_code == 400, r.text
        assert "object at 0x" not in r.text and "junk.png" in r.json()["message"]


def test_openapi_lists_every_4xx_a_route_returns(served):
    client, _, _ = served
    paths = client.get("/openapi.json").json()["paths"]
    expected = {
        ("/v1/classes", "post"): {400, 401, 403, 409, 413, 422, 503},
        ("/v1/classes/from-vectors", "post"): {401, 403, 409, 413, 422, 503},
        ("/v1/classes/{label}/samples", "post"): {400, 401, 403, 404, 413, 422, 503},
        ("/v1/classes/{label}/templates", "post"): {401, 403, 404, 413, 422, 503},
        ("/v1/classes/{label}", "get"): {401, 403, 404, 422},
        ("/v1/classes/{label}", "delete"): {401, 403, 404, 422, 503},
        ("/v1/identify", "post"): {400, 401, 403, 409, 413, 422},
        ("/v1/identify/vectors", "post"): {401, 403, 409, 413, 422},
        ("/v1/verify", "post"): {400, 401, 403, 404, 409, 413, 422},
        ("/v1/stats", "get"): {401, 403},
        ("/v1/keys", "post"): {401, 403, 422},
        ("/v1/audit", "get"): {401, 403, 422},
    }
    for (path, method), codes in expected.items():
        documented = {int(c) for c in paths[path][method]["responses"] if c.startswith("4") or c == "503"}
        assert codes <= documented, (path, method, sorted(codes - documented))


def test_an_erased_label_leaves_no_byte_in_any_gallery_file(served):
    """The op log kept only a salted hash, but the audit table kept the label in clear."""
    client, tokens, svc = served
    label = "zelda-quintessential-7781"
    h = auth(tokens, "enroller")
    assert client.post("/v1/classes", headers=h, data={"label": label},
                       files=files(glyph_pngs(5, 2))).status_code == 201
    client.post("/v1/identify", headers=auth(tokens, "reader"), params={"no_threshold": True},
                files=files(glyph_pngs(5, 1, seed=3)))
    client.post("/v1/verify", headers=auth(tokens, "reader"), params={"no_threshold": True},
                data={"label": label}, files=files(glyph_pngs(5, 1, seed=3), "file"))
    client.delete(f"/v1/classes/{label}", headers=auth(tokens, "reader"))  # refused, but names it
    assert client.delete(f"/v1/classes/{label}", headers=h).status_code == 200
    rows = audit_rows(client, tokens, label=label)  # still found by the label (as its hash)
    assert len(rows) == 5 and all(r["labels"] == [svc.gallery.erased_tag(label)] for r in rows)
    svc.gallery.compact()
    directory = svc.gallery.path
    svc.close()
    needle = label.encode()
    leaks = [p.name for p in directory.iterdir() if p.is_file() and needle in p.read_bytes()]
    assert leaks == []


def test_api_docs_render_offline_from_packaged_assets(tiny_encoder, tmp_path):
    """/docs and /redoc load their scripts from this server, never from a CDN (issue 12 part 3)."""
    from fastapi.testclient import TestClient

    from megaclass.serve import create_app

    with TestClient(create_app(tiny_encoder, tmp_path / "g")) as client:
        for page, asset in (("/docs", "swagger-ui-bundle.js"), ("/redoc", "redoc.standalone.js")):
            html = client.get(page)
            assert html.status_code == 200 and asset in html.text
            assert "cdn." not in html.text and "https://" not in html.text.split("<body")[0]
            src = re.search(r'src="([^"]*' + re.escape(asset) + ')"', html.text).group(1)
            js = client.get(src)
            assert js.status_code == 200 and len(js.content) > 100_000  # the real bundle, served here
        assert client.get("/openapi.json").json()["info"]["title"] == "megaclass"
