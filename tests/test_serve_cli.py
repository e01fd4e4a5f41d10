"""CLI commands of the service: keys add/list/revoke and audit (in-process, typer's CliRunner)."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("fastapi")
import typer  # noqa: E402
from typer.testing import CliRunner  # noqa: E402

from megaclass.serve import commands  # noqa: E402


@pytest.fixture(scope="module")
def cli():
    app = typer.Typer()
    commands.register(app)
    runner = CliRunner()
    return lambda *args: runner.invoke(app, [str(a) for a in args])


def test_keys_need_a_gallery_or_a_model(cli, tmp_path, tiny_model_dir):
    r = cli("keys", "add", "-g", tmp_path / "g", "--role", "admin")
    assert r.exit_code != 0 and "no gallery here" in str(r.exception)
    r = cli("keys", "add", "-g", tmp_path / "g", "-m", tiny_model_dir, "--role", "admin", "--name", "me",
            "--json")
    assert r.exit_code == 0, r.output
    made = json.loads(r.output)
    assert made["key"]["role"] == "admin" and made["token"].startswith(f"mck_{made['key']['id']}.")
    r = cli("keys", "add", "-g", tmp_path / "g", "--role", "boss")
    assert r.exit_code != 0 and "role must be one of" in str(r.exception)

    listed = json.loads(cli("keys", "list", "-g", tmp_path / "g", "--json").output)["keys"]
    assert [k["id"] for k in listed] == [made["key"]["id"]] and made["token"] not in json.dumps(listed)
    assert cli("keys", "revoke", "-g", tmp_path / "g", made["key"]["id"]).exit_code == 0
    listed = json.loads(cli("keys", "list", "-g", tmp_path / "g", "--json").output)["keys"]
    assert listed[0]["active"] is False
    r = cli("keys", "revoke", "-g", tmp_path / "g", "nokey")
    assert r.exit_code != 0 and "no API key" in str(r.exception)


def test_audit_command(cli, tmp_path, tiny_model_dir):
    from megaclass.serve.audit import AuditLog
    from megaclass.serve.db import ServiceDB

    cli("keys", "add", "-g", tmp_path / "g", "-m", tiny_model_dir)
    with ServiceDB(tmp_path / "g") as db:
        log = AuditLog(db)
        log.record("k1", "enroll", ["a"], "enrolled from 3 images", 201)
        log.record("k2", "identify", ["a", None], "1 known, 1 unknown", 200)
    rows = json.loads(cli("audit", "-g", tmp_path / "g", "--json").output)["rows"]
    assert [r["operation"] for r in rows] == ["identify", "enroll"] and rows[0]["labels"] == ["a"]
    rows = json.loads(cli("audit", "-g", tmp_path / "g", "--key-id", "k1", "--json").output)["rows"]
    assert len(rows) == 1 and rows[0]["decision"] == "enrolled from 3 images"
    r = cli("audit", "-g", tmp_path / "g")
    assert r.exit_code == 0 and "identify" in r.output
