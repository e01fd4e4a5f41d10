"""The API routes the operator console needs (issue 12 part 1), in process (TestClient):
thumbnails (opt-in, sealed with the gallery key, gone with erase), class search and
paging, calibrate, audit CSV export, model-input preview, whoami, the latest report,
the console page itself; and two leftovers of part 5: 401s are rate limited, and an
erase of an unknown label is audited hashed."""

from __future__ import annotations

import base64
import csv
import io
import tomllib
from pathlib import Path, PurePosixPath

import pytest

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402
from PIL import Image  # noqa: E402

from _serve_helpers import files, glyph_pngs  # noqa: E402
from megaclass.serve import Limits, create_app  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def _serve(encoder, gallery, **kwargs):
    app = create_app(encoder, gallery, limits=Limits(max_images=8, max_refusals=3), **kwargs)
    svc = app.state.service
    tokens = {role: svc.keys.add(f"test-{role}", role)[1] for role in ("reader", "enroller", "admin")}
    return app, svc, tokens


@pytest.fixture()
def served(tiny_encoder, tmp_path):
    app, svc, tokens = _serve(tiny_encoder, tmp_path / "g")
    with TestClient(app) as client:
        yield client, tokens, svc


def auth(tokens, role):
    return {"Authorization": f"Bearer {tokens[role]}"}


def enroll(client, tokens, label, class_id, *, retain=False, n=3):
    r = client.post("/v1/classes", headers=auth(tokens, "enroller"), files=files(glyph_pngs(class_id, n)),
                    data={"label": label, "retain_thumbnails": str(retain).lower()})
    assert r.status_code == 201, r.text
    return r


def _jpeg(url: str) -> Image.Image:
    assert url.startswith("data:image/jpeg;base64,")
    return Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1])))


def _thumbnail_rows(svc) -> list[tuple[int, bytes]]:
    return svc.db.query("SELECT class_id, image FROM thumbnails")


def test_thumbnails_are_opt_in_shown_with_candidates_and_gone_with_erase(served):
    client, tokens, svc = served
    enroll(client, tokens, "kept", 11, retain=True)
    enroll(client, tokens, "plain", 12)  # not asked: nothing of its images is kept
    assert len(_thumbnail_rows(svc)) == 3
    r = client.post("/v1/identify", headers=auth(tokens, "reader"), files=files(glyph_pngs(11, 1, seed=5)),
                    params={"no_threshold": True, "thumbnails": True, "k": 2})
    candidates = {c["label"]: c for c in r.json()["results"][0]["candidates"]}
    assert max(_jpeg(candidates["kept"]["thumbnail"]).size) <= 96
    assert "thumbnail" not in candidates["plain"]  # none retained: the field is absent
    r = client.post("/v1/identify", headers=auth(tokens, "reader"), files=files(glyph_pngs(11, 1, seed=5)),
                    params={"no_threshold": True})
    assert all("thumbnail" not in c for c in r.json()["results"][0]["candidates"])  # only when asked

    r = client.get("/v1/classes/kept", headers=auth(tokens, "reader"), params={"thumbnails": True})
    assert len(r.json()["thumbnails"]) == 3
    read = client.get("/v1/audit", headers=auth(tokens, "admin"), params={"operation": "read"}).json()["rows"]
    assert read[0]["labels"] == ["kept"] and "3 thumbnails" in read[0]["decision"]  # image reads are audited

    items = client.get("/v1/classes", headers=auth(tokens, "reader"), params={"detail": True}).json()["items"]
    assert [(i["label"], i["templates"], i["samples"], i["thumbnails"]) for i in items] == [
        ("kept", 1, 3, 3), ("plain", 1, 3, 0)]

    assert client.delete("/v1/classes/kept", headers=auth(tokens, "enroller")).status_code == 200
    assert _thumbnail_rows(svc) == []  # erased with the class, in the same commit


def test_replacing_enroll_drops_old_thumbnails(served):
    client, tokens, svc = served
    enroll(client, tokens, "x", 11, retain=True)
    r = client.post("/v1/classes", headers=auth(tokens, "enroller"), files=files(glyph_pngs(12, 2)),
                    data={"label": "x", "replace": "true"})
    assert r.status_code == 201 and _thumbnail_rows(svc) == []  # the old photos no longer belong to it
    r = client.post("/v1/classes/x/samples", headers=auth(tokens, "enroller"), files=files(glyph_pngs(12, 2)),
                    data={"retain_thumbnails": "true"})
    assert r.status_code == 200 and len(_thumbnail_rows(svc)) == 2


def test_thumbnails_of_an_encrypted_gallery_are_sealed(tiny_encoder, tmp_path):
    from megaclass.gallery.crypto import generate_key

    key = generate_key()
    app, svc, tokens = _serve(tiny_encoder, tmp_path / "g", key=key)
    with TestClient(app) as client:
        enroll(client, tokens, "sealed", 11, retain=True, n=2)
        rows = _thumbnail_rows(svc)
        assert len(rows) == 2 and not any(b"\xff\xd8\xff" in blob or b"JFIF" in blob for _, blob in rows)
        r = client.get("/v1/classes/sealed", headers=auth(tokens, "reader"), params={"thumbnails": True})
        assert all(_jpeg(u).size for u in r.json()["thumbnails"])  # decrypted for the answer

    from megaclass import Gallery, Recognizer

    # a service handed the gallery without its key in hand cannot seal: retention is refused, clearly
    rec = Recognizer(tiny_encoder, Gallery.open(tmp_path / "g", key=key))
    with TestClient(create_app(rec)) as client:
        r = client.post("/v1/classes", headers=auth(tokens, "enroller"), files=files(glyph_pngs(13, 2)),
                        data={"label": "new", "retain_thumbnails": "true"})
        assert r.status_code == 422 and "encrypted" in r.json()["message"], r.text
        assert "new" not in rec.gallery  # refused before anything was written


def test_classes_search_and_paging(served):
    client, tokens, _ = served
    for i, label in enumerate(("Alice", "alina", "bob", "Malik")):
        enroll(client, tokens, label, 20 + i, n=1)
    h = auth(tokens, "reader")
    assert client.get("/v1/classes", headers=h, params={"q": "ALI"}).json() == {
        "total": 3, "labels": ["Alice", "alina", "Malik"]}
    page = client.get("/v1/classes", headers=h, params={"q": "ali", "offset": 1, "limit": 1}).json()
    assert page == {"total": 3, "labels": ["alina"]}
    assert client.get("/v1/classes", headers=h).json() == {"total": 4,
                                                          "labels": ["Alice", "alina", "bob", "Malik"]}


def test_calibrate_route_sets_the_threshold_admin_only(served):
    client, tokens, svc = served
    for c in range(5):
        enroll(client, tokens, f"c{c}", c, n=2)
    non_mated = files([p for c in range(100, 120) for p in glyph_pngs(c, 5)])  # 100 images
    r = client.post("/v1/calibrate", headers=auth(tokens, "enroller"), files=non_mated[:8])
    assert r.status_code == 403
    r = client.post("/v1/calibrate", headers=auth(tokens, "admin"), files=non_mated[:20],
                    data={"target_fpir": "0.1"})
    assert r.status_code == 422 and "100" in r.json()["message"] and "allow_few" in r.json()["message"]
    assert not svc.recognizer.calibrated  # refused: nothing set
    r = client.post("/v1/calibrate", headers=auth(tokens, "admin"), files=non_mated,
                    data={"target_fpir": "0.1"})
    assert r.status_code == 200, r.text
    cal = r.json()
    assert cal["n_non_mated"] == 100 and cal["achieved_fpir"] <= 0.1 and cal["warning"] is None
    stats = client.get("/v1/stats", headers=auth(tokens, "reader")).json()
    assert stats["calibrated"] and stats["threshold"] == pytest.approx(cal["threshold"])
    assert stats["calibration"]["target_fpir"] == 0.1 and stats["calibration"]["n_non_mated"] == 100
    r = client.post("/v1/calibrate", headers=auth(tokens, "admin"), files=non_mated[:20],
                    data={"target_fpir": "0.1", "allow_few": "true"})
    assert r.status_code == 200 and "95" in r.json()["warning"]  # allowed, with the interval
    row = client.get("/v1/audit", headers=auth(tokens, "admin"), params={"operation": "calibrate"}).json()
    assert [x["status"] for x in row["rows"]] == [200, 200, 422, 403]


def test_audit_csv_export_filters_and_defuses_formulas(served):
    client, tokens, svc = served
    enroll(client, tokens, "=HYPERLINK(\"http://x\")", 11, n=1)
    enroll(client, tokens, "plain", 12, n=1)
    r = client.get("/v1/audit/export", headers=auth(tokens, "admin"), params={"operation": "enroll"})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/csv")
    assert "attachment" in r.headers["content-disposition"]
    rows = list(csv.reader(io.StringIO(r.text)))
    assert rows[0] == ["id", "time", "key_id", "operation", "labels", "decision", "status"]
    assert [row[3] for row in rows[1:]] == ["enroll", "enroll"]
    assert rows[2][4] == "[\"=HYPERLINK(\\\"http://x\\\")\"]"  # a JSON list: starts with [, harmless
    assert client.get("/v1/audit/export", headers=auth(tokens, "enroller")).status_code == 403
    from megaclass.serve.routers.admin import _cell

    assert [_cell(v) for v in ("=1+1", "+1", "-1", "@SUM(A1)", "ok", None)] == [
        "'=1+1", "'+1", "'-1", "'@SUM(A1)", "ok", ""]


def test_preview_shows_the_model_input(served, tiny_encoder):
    client, tokens, _ = served
    wide = io.BytesIO()
    Image.new("L", (90, 30), 255).save(wide, format="PNG")
    r = client.post("/v1/preview", headers=auth(tokens, "reader"),
                    files=[("files", ("wide.png", wide.getvalue(), "image/png"))] + files(glyph_pngs(3, 1)))
    assert r.status_code == 200, r.text
    body = r.json()
    size = tiny_encoder.input_spec.size
    assert body["size"] == size and body["channels"] == 1 and len(body["images"]) == 2
    first = Image.open(io.BytesIO(base64.b64decode(body["images"][0].split(",", 1)[1])))
    assert first.size == (size, size)
    assert first.getextrema() == (0, 0)  # a white page, padded to a square and inverted: all dark
    assert client.post("/v1/preview", files=files(glyph_pngs(3, 1))).status_code == 401


def test_whoami(served):
    client, tokens, svc = served
    body = client.get("/v1/whoami", headers=auth(tokens, "enroller")).json()
    assert body == {"id": svc.keys.authenticate(tokens["enroller"]).id, "name": "test-enroller",
                    "role": "enroller"}


def test_latest_report_is_served_inert(served, tmp_path):
    client, tokens, svc = served
    r = client.get("/v1/reports/latest", headers=auth(tokens, "reader"))
    assert r.status_code == 404 and "--report" in r.json()["message"]
    page = tmp_path / "rep" / "report.html"
    page.parent.mkdir()
    page.write_text("<html><body><h1>megaclass evaluation</h1><script>alert(1)</script></body></html>")
    svc.gallery.set_setting("last_report", {"path": str(page), "time": "2026-11-30T05:00:00+00:00"})
    r = client.get("/v1/reports/latest", headers=auth(tokens, "reader"))
    assert r.status_code == 200 and "megaclass evaluation" in r.text
    csp = r.headers["content-security-policy"]
    assert "default-src 'none'" in csp and "sandbox" in csp and "script-src" not in csp  # scripts: none
    svc.gallery.set_setting("last_report", {"path": str(tmp_path / "rep" / "secrets.txt")})
    r = client.get("/v1/reports/latest", headers=auth(tokens, "reader"))
    assert r.status_code == 404  # report.html only


def test_refused_requests_are_rate_limited_per_client(served):
    """Each 401 wrote an audit row: a client sending bad keys could fill the disk."""
    client, tokens, svc = served
    bad = {"Authorization": "Bearer mck_0badc0de.AAAAAAAAAAAAAAAAAAAAAAAAAAAA"}
    statuses = [client.get("/v1/stats", headers=bad).status_code for _ in range(6)]
    assert statuses == [401, 401, 401, 429, 429, 429]  # max_refusals=3 per minute
    assert int(client.get("/v1/stats", headers=bad).headers["retry-after"]) >= 1
    rows = svc.audit.query(limit=100)
    assert [r["status"] for r in rows][::-1] == [401, 401, 401, 429]  # then one row says it is limited
    assert "429, unaudited" in rows[0]["decision"]
    assert client.get("/v1/stats", headers=auth(tokens, "reader")).status_code == 200  # valid keys still work
    paths = client.get("/openapi.json").json()["paths"]
    keyed = [(path, m) for path, ops in paths.items() for m, op in ops.items() if op.get("security")]
    assert len(keyed) >= 20 and all("429" in paths[p][m]["responses"] for p, m in keyed)  # documented


def test_erase_of_an_unknown_label_is_audited_hashed(served):
    client, tokens, svc = served
    r = client.delete("/v1/classes/nobody-here", headers=auth(tokens, "enroller"))
    assert r.status_code == 404
    row = svc.audit.query(limit=1)[0]
    assert row["operation"] == "erase" and row["status"] == 404
    assert row["labels"] == [svc.gallery.erased_tag("nobody-here")]
    files_ = [p for p in Path(svc.gallery.path).iterdir() if p.is_file()]
    assert files_ and not [p.name for p in files_ if b"nobody-here" in p.read_bytes()]
    found = client.get("/v1/audit", headers=auth(tokens, "admin"), params={"label": "nobody-here"}).json()
    assert [r["status"] for r in found["rows"]] == [404]  # still found by its label


def test_console_page_and_assets_are_served_with_a_strict_policy(served):
    client, _, _ = served
    page = client.get("/")
    assert page.status_code == 200 and "megaclass console" in page.text
    assert "script-src 'self'" in page.headers["content-security-policy"]
    assert "https://" not in page.text  # no CDN
    for asset in ("/console/console.css", "/console/js/app.js", "/console/js/api.js"):
        r = client.get(asset)
        assert r.status_code == 200 and r.headers["content-security-policy"], asset
    assert "sessionStorage" in client.get("/console/js/api.js").text  # the key stays in the tab
    assert client.get("/console/js/nope.js").status_code == 404


def test_every_console_file_is_package_data():
    """A non-editable install ships what pyproject's package-data lists: every static file."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    patterns = config["tool"]["setuptools"]["package-data"]["megaclass.serve"]
    serve_dir = ROOT / "src" / "megaclass" / "serve"
    shipped = [p.relative_to(serve_dir).as_posix() for p in (serve_dir / "static").rglob("*") if p.is_file()]
    assert shipped and all(any(PurePosixPath(f).match(pat) for pat in patterns) for f in shipped), shipped
