"""Bad input and security of Milvus galleries: each a typed exception in Python and a one-line
error on the CLI, bounded in time; keys refused; credentials checked by a real server."""

from __future__ import annotations

import time

import pytest

pytest.importorskip("pymilvus")

from _milvus_server import free_port  # noqa: E402
from megaclass.errors import ConfigError, EncryptionKeyError  # noqa: E402
from megaclass.gallery.milvus import (  # noqa: E402
    MilvusAuthError,
    MilvusGallery,
    MilvusKeyError,
    MilvusUnavailableError,
    parse_uri,
)
from megaclass.gallery.open import open_gallery  # noqa: E402


def _cli(capsys, monkeypatch, *args) -> tuple[int, str]:
    """The console script as a user runs it (errors: one line on stderr, exit 2)."""
    import sys

    from megaclass import cli

    monkeypatch.setattr(sys, "argv", ["megaclass", *args])
    with pytest.raises(SystemExit) as done:
        cli.main()
    out = capsys.readouterr()
    return done.value.code, (out.out + out.err).strip()


def test_unreachable_uri_names_host_and_port_fast(capsys, monkeypatch):
    port = free_port()  # nothing listens there
    t0 = time.monotonic()
    with pytest.raises(MilvusUnavailableError, match=f"127.0.0.1:{port}"):
        open_gallery(f"milvus://127.0.0.1:{port}/g", dim=8)
    assert time.monotonic() - t0 < 6
    code, out = _cli(capsys, monkeypatch, "stats", "-g", f"milvus://127.0.0.1:{port}/g")
    assert code == 2 and f"127.0.0.1:{port}" in out and len(out.splitlines()) == 1


def test_uri_grammar_and_unknown_scheme(tmp_path, capsys, monkeypatch):
    with pytest.raises(ConfigError, match="unknown gallery URI scheme 'redis'"):
        open_gallery("redis://h:1/x", dim=8)
    code, out = _cli(capsys, monkeypatch, "stats", "-g", "redis://h:1/x")
    assert code == 2 and "unknown gallery URI scheme" in out
    for bad in ("milvus://h/x", "milvus://h:1/", "milvus://h:1/a-b", "milvus://h:1/x?nope=1",
                "milvus://h:1/x?ca=c.pem", "milvus://h:1/x?consistency=Never", "milvus-lite://x.txt"):
        with pytest.raises(ConfigError):
            parse_uri(bad)
    t = parse_uri("milvus://bob:s%40cret@db.example:19530/reg?tls=1&ca=/ca.pem&timeout=2.5", token=None)
    assert (t.uri, t.collection, t.token, t.timeout) == ("https://db.example:19530", "reg", "bob:s@cret", 2.5)
    assert t.tls == {"secure": True, "server_pem_path": "/ca.pem"} and "s@cret" not in t.redacted()
    m = parse_uri("milvus://h:1/x?tls=1&ca=ca.pem&cert=c.pem&key=k.pem&server_name=db", token="T")
    assert m.tls == {"secure": True, "ca_pem_path": "ca.pem", "client_pem_path": "c.pem",
                     "client_key_path": "k.pem", "server_name": "db"} and m.token == "T"


def test_key_refused_before_connecting(tmp_path, capsys, monkeypatch):
    with pytest.raises(MilvusKeyError, match="encryption at rest is the storage layer's"):
        MilvusGallery.open(f"milvus-lite://{tmp_path}/k.db", dim=8, key=b"k" * 32)
    assert isinstance(MilvusKeyError("x"), EncryptionKeyError)
    key = tmp_path / "key"
    key.write_text("ab" * 32)
    code, out = _cli(capsys, monkeypatch, "stats", "-g", f"milvus://127.0.0.1:{free_port()}/g",
                     "--key-file", str(key))
    assert code == 2 and "--key-file" in out and len(out.splitlines()) == 1


def test_credentials_on_a_secured_server(milvus_server, capsys, monkeypatch):
    """The session's server runs with authorization on: no token or a wrong one is refused
    with MilvusAuthError (a one-line CLI error); the right one (URI user:password, the
    token= argument or $MEGACLASS_MILVUS_TOKEN) opens the gallery."""
    host = f"127.0.0.1:{milvus_server.port}"
    for uri in (f"milvus://{host}/sec", f"milvus://root:wrong@{host}/sec"):
        with pytest.raises(MilvusAuthError):
            open_gallery(uri, dim=8, token="" if "@" not in uri else None)
    code, out = _cli(capsys, monkeypatch, "--milvus-token", "root:nope", "stats", "-g", f"milvus://{host}/sec")
    assert code == 2 and "refused the credentials" in out and len(out.splitlines()) == 1
    with open_gallery(f"milvus://{host}/sec", dim=8, token=milvus_server.token) as g:
        assert len(g) == 0


def test_server_config_retries_when_a_chosen_port_is_taken(tmp_path, monkeypatch):
    """A port chosen free but taken before Milvus's own bind check (CI saw "set
    query_coord_port=..., but bind failed") costs a retry with fresh ports, not the run."""
    import socket

    from megaclass.gallery.milvus import standalone

    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    real, calls = standalone.free_ports, []

    def first_set_collides(n):
        calls.append(n)
        ports = real(n)
        if len(calls) == 1:
            ports[6] = taken.getsockname()[1]  # the query coordinator's port
        return ports

    monkeypatch.setattr(standalone, "free_ports", first_set_collides)
    try:
        server = standalone.MilvusProcess(tmp_path)
    finally:
        taken.close()
    assert len(calls) == 2
    conf = (tmp_path / "configs" / "milvus.yaml").read_text()
    assert f"port: {server.port}" in conf
