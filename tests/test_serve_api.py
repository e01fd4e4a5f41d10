"""In-process tests of the HTTP service (FastAPI TestClient): every endpoint, role and error."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

from _serve_helpers import files, glyph_pngs  # noqa: E402
from megaclass.serve import Limits, create_app  # noqa: E402


@pytest.fixture(params=["local", "milvus"])
def served(request, tiny_encoder, tmp_path):
    """The app on a local gallery, and once more on a collection of the session's real
    Milvus server (the same tests, nothing above the gallery knows which it has)."""
    gallery = tmp_path / "g"
    if request.param == "milvus":
        pytest.importorskip("pymilvus")
        server = request.getfixturevalue("milvus_server")
        gallery = f"{server.uri_base}/serve_{tmp_path.name[-40:].replace('-', '_')}?local={tmp_path / 'side'}"
    app = create_app(tiny_encoder, gallery, limits=Limits(max_images=8, max_vectors=16,
                                                                max_body_bytes=200_000))
    svc = app.state.service
    tokens = {role: svc.keys.add(f"test-{role}", role)[1] for role in ("reader", "enroller", "admin")}
    with TestClient(app) as client:
        yield client, tokens, svc


def auth(tokens, role):
    return {"Authorization": f"Bearer {tokens[role]}"}


def enroll(client, tokens, label, class_id, n=3, role="enroller"):
    return client.post("/v1/classes", headers=auth(tokens, role), data={"label": label},
                       files=files(glyph_pngs(class_id, n)))


def test_health_ready_metrics(served):
    client, tokens, _ = served
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").json()["status"] == "ready"
    enroll(client, tokens, "a", 1)
    text = client.get("/metrics").text
    assert "megaclass_gallery_classes 1" in text
    assert 'megaclass_http_requests_total{method="POST",route="/v1/classes",status="201"} 1' in text
    assert "megaclass_http_request_duration_seconds_bucket" in text


def test_enroll_identify_verify_get_erase(served):
    client, tokens, _ = served
    for i, c in enumerate((11, 12, 13)):
        r = enroll(client, tokens, f"class-{c}", c)
        assert r.status_code == 201, r.text
        assert r.json() == {"label": f"class-{c}", "samples": 3, "gallery_classes": i + 1}
    q = glyph_pngs(12, 2, seed=5)
    r = client.post("/v1/identify", headers=auth(tokens, "reader"), files=files(q),
                    params={"k": 2, "no_threshold": True})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["threshold"] is None and len(body["results"]) == 2
    assert all(d["known"] and len(d["candidates"]) == 2 for d in body["results"])
    assert body["results"][0]["label"] == "class-12"
    r = client.post("/v1/verify", headers=auth(tokens, "reader"), data={"label": "class-12"},
                    params={"no_threshold": True},
                    files=files(q[:1], "file"))
    assert r.status_code == 200 and r.json()["accepted"] is True
    r = client.get("/v1/classes/class-12", headers=auth(tokens, "reader"))
    assert r.json()["templates"] == 1 and "vector" not in r.text
    r = client.get("/v1/classes", headers=auth(tokens, "reader"), params={"limit": 2})
    assert r.json() == {"total": 3, "labels": ["class-11", "class-12"]}
    r = client.post("/v1/classes/class-12/samples", headers=auth(tokens, "enroller"),
                    files=files(glyph_pngs(12, 2, seed=9)))
    assert r.status_code == 200 and r.json()["samples"] == 2
    got = client.get("/v1/classes/class-12", headers=auth(tokens, "reader")).json()
    assert got["samples"] == 5 and got["meta"] == {}  # internal meta keys never leak
    r = client.delete("/v1/classes/class-12", headers=auth(tokens, "enroller"))
    assert r.json() == {"label": "class-12", "templates_removed": 1, "gallery_classes": 2}
    assert client.get("/v1/classes/class-12", headers=auth(tokens, "reader")).status_code == 404
    stats = client.get("/v1/stats", headers=auth(tokens, "reader")).json()
    assert stats["classes"] == 2 and stats["dim"] == 32 and "path" not in stats


def test_vectors_enroll_add_identify(served):
    client, tokens, _ = served
    v = np.eye(32)[:2].tolist()
    r = client.post("/v1/classes/from-vectors", headers=auth(tokens, "enroller"),
                    json={"label": "vec", "vectors": v, "meta": {"source": "test"}})
    assert r.status_code == 201 and r.json()["samples"] == 2
    r = client.post("/v1/classes/vec/templates", headers=auth(tokens, "enroller"),
                    json={"vectors": [np.eye(32)[5].tolist()]})
    assert r.status_code == 200
    r = client.post("/v1/identify/vectors", headers=auth(tokens, "reader"), params={"no_threshold": True},
                    json={"vectors": [np.eye(32)[5].tolist()], "k": 1})
    assert r.json()["results"][0]["label"] == "vec"
    assert r.json()["results"][0]["score"] == pytest.approx(1.0)
    meta = client.get("/v1/classes/vec", headers=auth(tokens, "reader")).json()
    assert meta == {"label": "vec", "templates": 3, "samples": None, "meta": {"source": "test"}}


def test_identify_on_empty_gallery_is_unknown(served):
    client, tokens, _ = served
    r = client.post("/v1/identify/vectors", headers=auth(tokens, "reader"), json={"vectors": [[1.0] * 32]},
                    params={"no_threshold": True})
    assert r.status_code == 200
    assert r.json()["results"] == [{"label": None, "known": False, "score": None, "candidates": []}]


@pytest.mark.parametrize("method,path,role", [
    ("post", "/v1/classes/from-vectors", "enroller"), ("delete", "/v1/classes/x", "enroller"),
    ("get", "/v1/keys", "admin"), ("get", "/v1/audit", "admin"), ("post", "/v1/identify/vectors", "reader"),
    ("get", "/v1/stats", "reader"), ("get", "/v1/classes", "reader"),
])
def test_roles(served, method, path, role):
    client, tokens, _ = served
    body = {"json": {"label": "x", "vectors": [[1.0] * 32]}} if method == "post" else {}
    r = getattr(client, method)(path, **body)
    assert r.status_code == 401 and r.json()["error"] == "Unauthorized"
    unknown = {"Authorization": "Bearer mck_00000000.nonsense-nonsense-nonsense"}
    r = getattr(client, method)(path, headers=unknown, **body)
    assert r.status_code == 401
    roles = ("reader", "enroller", "admin")
    for have in roles:
        r = getattr(client, method)(path, headers=auth(tokens, have), **body)
        allowed = roles.index(have) >= roles.index(role)
        assert (r.status_code != 403) == allowed, (have, r.status_code, r.text)
        assert r.status_code not in (401, 500)


def test_errors_map_to_statuses_and_write_nothing(served):
    client, tokens, svc = served
    h = auth(tokens, "enroller")
    # corrupt image among good ones: 400 naming the file, nothing enrolled
    bad = files(glyph_pngs(3, 2)) + [("files", ("broken.png", b"not an image", "image/png"))]
    r = client.post("/v1/classes", headers=h, data={"label": "bad"}, files=bad)
    assert r.status_code == 400 and r.json()["error"] == "CorruptImageError"
    assert "broken.png" in r.json()["message"] and len(svc.gallery) == 0
    # wrong dimension / NaN: 422 naming the problem, nothing enrolled
    r = client.post("/v1/classes/from-vectors", headers=h, json={"label": "d", "vectors": [[1.0] * 31]})
    assert r.status_code == 422 and r.json()["error"] == "DimensionMismatchError"
    r = client.post("/v1/classes/from-vectors", headers={**h, "Content-Type": "application/json"},
                    content=b'{"label": "n", "vectors": [[NaN' + b', 1.0' * 31 + b']]}')
    assert r.status_code == 422 and r.json()["error"] == "InvalidInputError", r.text
    r = client.post("/v1/classes/from-vectors", headers=h,
                    json={"label": "r", "vectors": [[1.0], [1.0, 2.0]]})
    assert r.status_code == 422 and r.json()["error"] == "ValidationError"
    assert len(svc.gallery) == 0
    # duplicates 409, unknown labels 404
    assert enroll(client, tokens, "dup", 4).status_code == 201
    assert enroll(client, tokens, "dup", 5).status_code == 409
    assert client.delete("/v1/classes/nobody", headers=h).status_code == 404
    r = client.post("/v1/verify", headers=auth(tokens, "reader"), data={"label": "nobody"},
                    params={"no_threshold": True},
                    files=files(glyph_pngs(4, 1), "file"))
    assert r.status_code == 404 and r.json()["error"] == "UnknownLabelError"
    r = client.post("/v1/classes/nobody/samples", headers=h, files=files(glyph_pngs(4, 1)))
    assert r.status_code == 404
    # limits: too many images / vectors / bytes / k -> 413 or 422, naming the limit
    r = client.post("/v1/classes", headers=h, data={"label": "many"}, files=files(glyph_pngs(6, 9)))
    assert r.status_code == 413 and "max_images" in r.json()["message"]
    r = client.post("/v1/identify/vectors", headers=auth(tokens, "reader"),
                    json={"vectors": [[1.0] * 32] * 17})
    assert r.status_code == 413 and "max_vectors" in r.json()["message"]
    r = client.post("/v1/classes", headers=h, data={"label": "big"},
                    files=[("files", ("big.png", b"\0" * 300_000, "image/png"))])
    assert r.status_code == 413 and "max_body_bytes" in r.json()["message"]
    r = client.post("/v1/identify", headers=auth(tokens, "reader"), params={"k": 101},
                    files=files(glyph_pngs(4, 1)))
    assert r.status_code == 422 and "max_k" in r.json()["message"]
    assert svc.gallery.labels() == ["dup"]


def test_streamed_body_over_limit_is_413(served):
    client, tokens, _ = served

    def chunks():
        for _ in range(30):
            yield b"x" * 10_000

    r = client.post("/v1/classes/from-vectors", headers={**auth(tokens, "enroller"),
                                                         "Content-Type": "application/json"},
                    content=chunks())
    assert r.status_code == 413


def test_keys_and_audit(served):
    client, tokens, svc = served
    admin = auth(tokens, "admin")
    r = client.post("/v1/keys", headers=admin, json={"name": "temp", "role": "reader"})
    assert r.status_code == 201
    new = r.json()
    new_h = {"Authorization": f"Bearer {new['token']}"}
    assert client.get("/v1/stats", headers=new_h).status_code == 200
    listed = client.get("/v1/keys", headers=admin).json()
    assert {k["name"] for k in listed} >= {"temp", "test-admin"} and "token" not in str(listed)
    assert "secret" not in str(listed)
    assert client.delete(f"/v1/keys/{new['key']['id']}", headers=admin).json()["active"] is False
    assert client.get("/v1/stats", headers=new_h).status_code == 401
    assert client.delete("/v1/keys/ffffffff", headers=admin).status_code == 404
    # audit: enroll, identify, verify, erase, a denied attempt; filters
    enroll(client, tokens, "aud", 21)
    client.post("/v1/identify", headers=auth(tokens, "reader"), files=files(glyph_pngs(21, 1, seed=3)),
                params={"no_threshold": True})
    client.post("/v1/verify", headers=auth(tokens, "reader"), data={"label": "aud"},
                params={"no_threshold": True},
                files=files(glyph_pngs(21, 1, seed=3), "file"))
    client.delete("/v1/classes/aud", headers=auth(tokens, "reader"))  # denied
    client.delete("/v1/classes/aud", headers=auth(tokens, "enroller"))
    rows = client.get("/v1/audit", headers=admin, params={"label": "aud"}).json()["rows"]
    ops = [(r["operation"], r["decision"], r["status"]) for r in rows][::-1]
    assert ops[0] == ("enroll", "enrolled from 3 images", 201)
    assert ops[1] == ("identify", "1 known, 0 unknown", 200)
    assert ops[2] == ("verify", "accepted", 200)
    assert ops[3] == ("erase", "denied: role reader", 403)  # a refused attempt names its target
    assert ops[4] == ("erase", "erased 1 templates", 200)
    denied = client.get("/v1/audit", headers=admin, params={"operation": "erase"}).json()["rows"]
    assert any(r["decision"] == "denied: role reader" and r["status"] == 403 for r in denied)
    only = client.get("/v1/audit", headers=admin, params={"operation": "keys"}).json()["rows"]
    assert len(only) == 2 and all(r["key_id"] == svc.keys.authenticate(tokens["admin"]).id for r in only)
    assert client.get("/v1/audit", headers=auth(tokens, "enroller")).status_code == 403


def test_openapi_documents_every_route(served):
    client, _, _ = served
    paths = client.get("/openapi.json").json()["paths"]
    for p in ("/v1/classes", "/v1/classes/from-vectors", "/v1/classes/{label}", "/v1/identify",
              "/v1/identify/vectors", "/v1/verify", "/v1/stats", "/v1/keys", "/v1/audit", "/healthz"):
        assert p in paths, p
