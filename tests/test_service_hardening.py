"""The HTTP service probed as an attacker or a careless operator would (issue 12, parts 4-5).

Real app, real SQLite, no mocks; the one fault injected (an internal error) is a plain
function swapped on the live recognizer, since no valid request should cause one.
"""

from __future__ import annotations

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
    assert got[:5] == [("enroll", ["mallory"], 401, None), ("erase", ["alice"], 401, None),
                       ("read", ["alice"], 401, None), ("erase", ["alice"], 403, reader_id),
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
