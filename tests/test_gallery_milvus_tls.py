"""TLS against a real Milvus server with TLS on (``common.security.tlsMode: 1``, a
certificate signed by a private CA made here with openssl): the gallery connects with
``?tls=1&ca=...``; a plain client and one that does not trust the CA are refused; and no
URI borrows another's connection (pymilvus shares them by host:port and token)."""

from __future__ import annotations

import shutil
import subprocess

import numpy as np
import pytest

pytest.importorskip("milvus")
pytest.importorskip("pymilvus")
if shutil.which("openssl") is None:
    pytest.skip("openssl is needed to make the test certificates", allow_module_level=True)

from _milvus_server import MilvusProcess, drop_gallery  # noqa: E402
from megaclass.gallery.milvus import MilvusGallery, MilvusUnavailableError  # noqa: E402


def _certificates(d):
    """A private CA and a server certificate for localhost / 127.0.0.1 signed by it."""
    def run(*args):
        subprocess.run(args, check=True, capture_output=True, cwd=d)

    for name, cn in (("ca", "megaclass-test-ca"), ("other-ca", "someone-else")):
        run("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key",
            "-out", f"{name}.pem", "-days", "2", "-subj", f"/CN={cn}")
    run("openssl", "req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-out", "server.csr",
        "-subj", "/CN=localhost")
    (d / "ext.cnf").write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    run("openssl", "x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
        "-CAcreateserial", "-out", "server.pem", "-days", "2", "-extfile", "ext.cnf")


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory):
    d = tmp_path_factory.mktemp("milvus-tls")
    _certificates(d)
    server = MilvusProcess(d / "server", **{"common.security.tlsMode": 1,
                                            "tls.serverPemPath": str(d / "server.pem"),
                                            "tls.serverKeyPath": str(d / "server.key"),
                                            "tls.caPemPath": str(d / "ca.pem")})
    server.start()
    yield server, d
    server.stop()


def _refused(uri: str, host: str) -> None:
    with pytest.raises(MilvusUnavailableError, match=host):
        MilvusGallery.open(uri, dim=4)


def test_tls_gallery_and_what_is_refused(tls_server):
    server, d = tls_server
    host = f"127.0.0.1:{server.port}"
    tls = f"milvus://{host}/secure?tls=1&server_name=localhost&timeout=5&ca="
    plain = f"milvus://{host}/secure?timeout=5"
    _refused(plain, host)  # plain gRPC to a TLS port
    _refused(tls + str(d / "other-ca.pem"), host)  # a CA that did not sign the server's certificate
    with MilvusGallery.open(tls + str(d / "ca.pem"), dim=4) as g:
        g.enroll("a", np.eye(4, dtype=np.float32)[:1])
        assert g.search(np.eye(4, dtype=np.float32)[:1], k=1)[0][0].label == "a"
        _refused(plain, host)  # not even while a TLS connection to the same server is open


def test_tls_uri_never_rides_on_a_plain_connection(milvus_server):
    """pymilvus shares connections by host:port and token: a tls=1 URI to a plain server
    must fail even while a plain gallery on that server is open in this process."""
    host = f"127.0.0.1:{milvus_server.port}"
    with MilvusGallery.open(f"{milvus_server.uri_base}/plainly?timeout=10", dim=4):
        with pytest.raises(MilvusUnavailableError, match=host):
            MilvusGallery.open(f"{milvus_server.uri_base}/plainly?tls=1&timeout=5")
    with MilvusGallery.open(f"{milvus_server.uri_base}/plainly?timeout=10") as g:
        drop_gallery(g)
