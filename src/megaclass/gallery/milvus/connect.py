"""Milvus URIs and the client connection: parse, connect within a bounded wait, and turn
pymilvus exceptions into megaclass's typed, one-line errors.

URI grammar (one string names the whole connection, like a FAISS factory string)::

    milvus://[USER:PASSWORD@]HOST:PORT/COLLECTION[?OPTIONS]   a Milvus server or cluster
    milvus-lite://PATH.db[?collection=NAME&OPTIONS]          Milvus Lite, embedded, one file

OPTIONS (``&``-separated): ``tls=1`` (TLS; ``ca=PEM`` to trust a private CA, ``cert=PEM``
+ ``key=PEM`` for mutual TLS, ``server_name=NAME``), ``timeout=SECONDS`` (per call, default
10: a server that does not answer in that time raises MilvusUnavailableError),
``consistency=Session|Strong|Bounded`` (reads, see the package docstring), ``index=`` (see
:mod:`.schema`), ``local=DIR`` (the local side folder, :attr:`path`). The token comes from
``token=`` in Python, ``--milvus-token`` on the CLI, or ``$MEGACLASS_MILVUS_TOKEN``.
"""

from __future__ import annotations

import os
import re
import socket
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qsl, unquote, urlsplit

from ...errors import ConfigError, MegaclassError
from .errors import MilvusAuthError, MilvusUnavailableError, MilvusVersionError

TOKEN_ENV = "MEGACLASS_MILVUS_TOKEN"
MIN_SERVER = (2, 3)  # JSON fields, upsert, query iterators
CONSISTENCY = ("Session", "Strong", "Bounded", "Eventually")
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,200}$")
_OPTIONS = {"tls", "ca", "cert", "key", "server_name", "timeout", "consistency", "index", "local",
            "collection"}


@dataclass
class MilvusTarget:
    """A parsed Milvus URI."""

    uri: str                      # what pymilvus connects to (http://host:port or a .db path)
    collection: str
    lite: bool
    where: str                    # host:port or the .db path, for error messages
    token: str = ""
    timeout: float = 10.0
    consistency: str = "Session"
    index: str = "auto"
    local: Path | None = None
    tls: dict = field(default_factory=dict)

    def redacted(self) -> str:
        kind = "milvus-lite" if self.lite else "milvus"
        return f"{kind}://{self.where}/{self.collection}"


def is_milvus_uri(text) -> bool:
    """Whether ``text`` is a string naming a Milvus gallery."""
    return isinstance(text, str) and text.split("://", 1)[0] in ("milvus", "milvus-lite")


def parse_uri(text: str, token: str | None = None) -> MilvusTarget:
    """Parse a ``milvus://`` or ``milvus-lite://`` URI (ConfigError names what is wrong)."""
    scheme, sep, rest = text.partition("://")
    if not sep or scheme not in ("milvus", "milvus-lite"):
        raise ConfigError(f"unknown gallery URI scheme {scheme + sep!r} in {text!r}: use a folder, "
                          "milvus://host:port/collection or milvus-lite://file.db")
    body, _, query = rest.partition("?")
    opts = dict(parse_qsl(query, keep_blank_values=True))
    unknown = sorted(set(opts) - _OPTIONS)
    if unknown:
        raise ConfigError(f"unknown option(s) {unknown} in gallery URI (known: {sorted(_OPTIONS)})")
    if scheme == "milvus-lite":
        if not body.endswith(".db"):
            raise ConfigError(f"milvus-lite URI must name a .db file, got {text!r}")
        path = Path(body).expanduser().resolve()
        target = MilvusTarget(str(path), opts.get("collection", "megaclass"), True, str(path))
    else:
        parts = urlsplit("//" + body)
        try:
            host, port = parts.hostname, parts.port
        except ValueError as exc:
            raise ConfigError(f"bad port in gallery URI {text!r}: {exc}") from None
        coll = parts.path.strip("/")
        if not host or not port or not coll or "/" in coll:
            raise ConfigError(f"gallery URI must be milvus://host:port/collection, got {text!r}")
        if parts.username and not token:
            token = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
        tls = opts.get("tls", "0").lower() in ("1", "true", "yes")
        target = MilvusTarget(f"{'https' if tls else 'http'}://{host}:{port}", coll, False,
                              f"{host}:{port}")
        if tls:
            target.tls = {"secure": True}
            for opt, arg in (("ca", "ca_pem_path"), ("cert", "client_pem_path"),
                             ("key", "client_key_path"), ("server_name", "server_name")):
                if opts.get(opt):
                    target.tls[arg] = opts[opt]
            if opts.get("ca") and not opts.get("cert"):  # one-way TLS with a private CA
                target.tls["server_pem_path"] = target.tls.pop("ca_pem_path")
        elif any(opts.get(o) for o in ("ca", "cert", "key", "server_name")):
            raise ConfigError("ca=/cert=/key=/server_name= need tls=1 in the gallery URI")
    if not _NAME.match(target.collection):
        raise ConfigError(f"Milvus collection name {target.collection!r}: letters, digits and _ only, "
                          "starting with a letter or _")
    target.token = token if token is not None else os.environ.get(TOKEN_ENV, "")
    try:
        target.timeout = float(opts.get("timeout", 10))
    except ValueError:
        raise ConfigError(f"timeout= must be seconds, got {opts['timeout']!r}") from None
    target.consistency = opts.get("consistency", "Session").capitalize()
    if target.consistency not in CONSISTENCY:
        raise ConfigError(f"consistency= must be one of {CONSISTENCY}, got {opts['consistency']!r}")
    target.index = opts.get("index", "auto")
    if opts.get("local"):
        target.local = Path(opts["local"]).expanduser()
    return target


def local_folder(target: MilvusTarget) -> Path:
    """The gallery's local side folder (``local=`` or one per URI under $MEGACLASS_HOME)."""
    if target.local is not None:
        return target.local
    import hashlib

    home = Path(os.environ.get("MEGACLASS_HOME", Path.home() / ".megaclass"))
    return home / "milvus" / hashlib.sha256(target.redacted().encode()).hexdigest()[:16]


def _reachable(target: MilvusTarget) -> None:
    """Fail fast (one TCP connect within the timeout) with host:port in the message."""
    host, _, port = target.where.rpartition(":")
    try:
        socket.create_connection((host, int(port)), timeout=min(target.timeout, 5.0)).close()
    except OSError as exc:
        raise MilvusUnavailableError(f"cannot reach Milvus at {target.where}: "
                                     f"{exc.strerror or exc} (is the server running?)") from None


def connect(target: MilvusTarget):
    """A ``pymilvus.MilvusClient`` for ``target``; typed errors for a server that is down,
    refuses the credentials or is older than Milvus 2.3."""
    try:
        from pymilvus import MilvusClient
    except ImportError:  # pragma: no cover - depends on the installation
        raise ConfigError("a Milvus gallery needs pymilvus: pip install 'megaclass[milvus]'") from None
    if not target.lite:
        _reachable(target)
    if target.lite and not Path(target.uri).parent.is_dir():
        raise ConfigError(f"folder of {target.uri} does not exist")
    with calling(target, "connect"):
        # dedicated: pymilvus 3 shares one connection per "host:port|token" whatever its TLS
        # settings, so a tls=1 URI silently rode on an open plain connection to the same
        # server (and a plain one on TLS): tests/test_gallery_milvus_tls.py pins both
        client = MilvusClient(uri=target.uri, token=target.token, timeout=target.timeout,
                              dedicated=True, **target.tls)
        version = client.get_server_version(timeout=target.timeout)
    if not target.lite:
        nums = tuple(int(x) for x in re.findall(r"\d+", str(version))[:2])
        if nums and nums < MIN_SERVER:
            client.close()
            raise MilvusVersionError(f"Milvus at {target.where} is {version}: megaclass needs "
                                     f"{MIN_SERVER[0]}.{MIN_SERVER[1]} or newer")
    return client, str(version)


_AUTH = ("auth", "credential", "password", "token", "unauthenticated", "permission denied")
_DOWN = ("unavailable", "deadline", "timeout", "connect", "retry", "not ready", "closed channel",
         "failed to connect", "socket", "stream removed", "reset by peer", "eof", "not loaded",
         "no available", "shard leader", "not serviceable", "channel", "node not found",
         "not found in querynode", "loading", "server is not healthy", "stopping")


@contextmanager
def calling(target: MilvusTarget, what: str):
    """Translate pymilvus / gRPC failures inside the block into megaclass errors."""
    try:
        yield
    except MegaclassError:
        raise
    except Exception as exc:
        mod = type(exc).__module__ or ""
        if not (mod.startswith("pymilvus") or mod.startswith("grpc")):
            raise
        full = str(getattr(exc, "message", None) or exc)
        details, code = getattr(exc, "details", None), getattr(exc, "code", None)
        if callable(details) and callable(code):  # a raw gRPC error: its details say what happened
            full = f"{details()} ({code().name})"
        cause: BaseException | None = exc  # pymilvus wraps the gRPC status (e.g. UNAUTHENTICATED)
        seen = 0
        while cause is not None and seen < 8:
            code, details = getattr(cause, "code", None), getattr(cause, "details", None)
            if callable(details) and callable(code):
                full += f" ({code().name}: {details()})"
                break
            cause, seen = cause.__cause__ or cause.__context__, seen + 1
        msg = " ".join(full.split())[:300]
        low = full.lower()
        if any(w in low for w in _AUTH):
            raise MilvusAuthError(f"Milvus at {target.where} refused the credentials ({what}): {msg}; "
                                  f"give --milvus-token / ${TOKEN_ENV} (token or user:password)") from None
        if any(w in low for w in _DOWN) or type(exc).__name__ in ("MilvusUnavailableException",
                                                                   "ConnectError"):
            raise MilvusUnavailableError(f"Milvus at {target.where} did not answer ({what}) within "
                                         f"{target.timeout:g} s: {msg}; retry when it is back") from None
        raise ConfigError(f"Milvus at {target.where} refused {what}: {msg}") from None
