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


# What a failure means, from structured information first (gRPC status codes, pymilvus
# exception classes, Milvus's error codes and its retriable / input-error flags), words of
# the message only when those say nothing (Milvus 2.3 answers most failures with the
# catch-all code 65535). An invalid request (a bad search or index parameter, a filter
# Milvus cannot parse) is a ConfigError naming the problem: retrying never fixes it.
_GRPC_AUTH = {"UNAUTHENTICATED", "PERMISSION_DENIED"}
_GRPC_INVALID = {"INVALID_ARGUMENT", "OUT_OF_RANGE", "UNIMPLEMENTED", "ALREADY_EXISTS",
                 "FAILED_PRECONDITION"}
_GRPC_DOWN = {"UNAVAILABLE", "DEADLINE_EXCEEDED", "CANCELLED", "ABORTED"}
# Milvus server codes (Status.code, pkg/util/merr/errors.go); 1 (service not ready) is left
# out: pymilvus's own errors carry code 1 (its UnexpectedError); the server's retriable flag
# covers it
_CODE_AUTH = {1400, 1401, 1800}  # not authenticated, privilege not permitted, need authenticate
_CODE_INVALID = {105, 701, 702, 1100, 1101, 1102, 1700, 1701}  # illegal schema, index type not
# supported / duplicate, parameter invalid / missing / too large, field not found / bad name
_CODE_DOWN = {2, 101, 103, 106, 503, 901, 902, 903, 905, 10000, 10001}  # unavailable (pymilvus's
# "Fail connecting" is 2 too), collection not (fully) loaded / recovering, channel not
# available, node not found / offline / lacking / not available, canceled, timeout
# the old status codes (Status.error_code, pymilvus's compatible_code)
_OLD_AUTH = {3}  # PermissionDenied
_OLD_INVALID = {5, 7, 8, 9, 10, 11, 12, 22, 23, 51}  # IllegalArgument, -Dimension, -IndexType,
# -CollectionName, -TOPK, -RowRecord, -VectorID, -NLIST, -MetricType, UpsertAutoIDTrue
_OLD_DOWN = {2, 45, 46, 49, 55, 56, 57}  # ConnectFailed, NotShardLeader, NoReplicaAvailable,
# RateLimit, TimeTickLongDelay, NotReadyServe, NotReadyCoordActivating
_INVALID_CLASSES = {"ParamError", "DataTypeNotMatchException", "DataNotMatchException",
                    "DataTypeNotSupportException", "PrimaryKeyException", "PartitionKeyException",
                    "ClusteringKeyException", "FieldsTypeException", "FieldTypeException",
                    "FunctionsTypeException", "AutoIDException", "InvalidConsistencyLevel",
                    "CannotInferSchemaException"}
_DOWN_CLASSES = {"MilvusUnavailableException", "ConnectError"}
# words, when nothing structured decides: an invalid request's first (a Milvus 2.3 message
# about a bad parameter also names the query node's "channel" or the "token" it could not
# parse), then credentials, then a server that is down or restarting
_INVALID_WORDS = ("invalid parameter", "missing parameter", "parameter too large", "out of range",
                  "cannot parse expression", "failed to create query plan", "token recognition error",
                  "unknown escape sequence", "unexpected character", "unknown field",
                  "is invalid", "should be in range", "metric type not match", "dimension mismatch",
                  "not supported", "unsupported", 'assert "')  # a query node's check of the request
_AUTH = ("unauthenticated", "auth check failure", "authentication", "credential", "password",
         "permission denied", "privilege not permitted", "missing authorization", "invalid token")
_DOWN = ("unavailable", "deadline", "timed out", "retry timeout", "retry run out", "not ready",
         "closed channel", "fail connecting", "failed to connect", "connection refused",
         "socket closed", "stream removed", "reset by peer", "unexpected eof", "not loaded",
         "no available", "shard leader", "not serviceable", "node not found",
         "not found in querynode", "on recovering", "server is not healthy", "stopping")


def _chain(exc: BaseException) -> list[BaseException]:
    """``exc`` and its causes, each once (pymilvus raises ``e from e``: a loop)."""
    out: list[BaseException] = []
    cause: BaseException | None = exc
    while cause is not None and len(out) < 8 and all(cause is not c for c in out):
        out.append(cause)
        nxt = cause.__cause__
        cause = nxt if nxt is not None and nxt is not cause else cause.__context__
    return out


def _grpc_code(err: BaseException) -> str | None:
    """The gRPC status name of a raw gRPC error, or of a pymilvus error carrying one."""
    code, details = getattr(err, "code", None), getattr(err, "details", None)
    if callable(code) and callable(details):
        code = code()
    return getattr(code, "name", None) if code is not None and not isinstance(code, int) else None


def classify(exc: BaseException) -> str:
    """``"auth"``, ``"invalid"``, ``"down"`` or ``""`` (unknown) for a pymilvus / gRPC failure."""
    chain = _chain(exc)
    grpc = {c for c in map(_grpc_code, chain) if c}
    codes = {code for code in (getattr(c, "code", None) for c in chain) if type(code) is int}
    old = {getattr(c, "compatible_code", None) for c in chain} - {None}
    names = {type(c).__name__ for c in chain}
    if grpc & _GRPC_AUTH or codes & _CODE_AUTH or old & _OLD_AUTH:
        return "auth"
    if (grpc & _GRPC_INVALID or codes & _CODE_INVALID or old & _OLD_INVALID or names & _INVALID_CLASSES
            or any(getattr(c, "is_input_error", False) is True for c in chain)):
        return "invalid"
    if (grpc & _GRPC_DOWN or codes & _CODE_DOWN or old & _OLD_DOWN or names & _DOWN_CLASSES
            or any(getattr(c, "retriable", False) is True for c in chain)):
        return "down"
    low = " ".join(str(getattr(c, "message", None) or c) + " " + _details(c) for c in chain).lower()
    for kind, words in (("invalid", _INVALID_WORDS), ("auth", _AUTH), ("down", _DOWN)):
        if any(w in low for w in words):
            return kind
    return ""


def _details(err: BaseException) -> str:
    details = getattr(err, "details", None)
    return str(details()) if callable(details) and callable(getattr(err, "code", None)) else ""


@contextmanager
def calling(target: MilvusTarget, what: str):
    """Translate pymilvus / gRPC failures inside the block into megaclass errors: a server
    that is down or restarting is MilvusUnavailableError (retryable), refused credentials
    MilvusAuthError, anything else (an invalid request above all) ConfigError."""
    try:
        yield
    except MegaclassError:
        raise
    except Exception as exc:
        mod = type(exc).__module__ or ""
        if not (mod.startswith("pymilvus") or mod.startswith("grpc")):
            raise
        full = str(getattr(exc, "message", None) or exc)
        for cause in _chain(exc):  # pymilvus wraps the gRPC status (e.g. UNAUTHENTICATED)
            name, details = _grpc_code(cause), _details(cause)
            if name and details:
                full = f"{details} ({name})" if cause is exc else f"{full} ({name}: {details})"
                break
        msg = " ".join(full.split())[:300]
        kind = classify(exc)
        if kind == "auth":
            raise MilvusAuthError(f"Milvus at {target.where} refused the credentials ({what}): {msg}; "
                                  f"give --milvus-token / ${TOKEN_ENV} (token or user:password)") from None
        if kind == "down":
            raise MilvusUnavailableError(f"Milvus at {target.where} did not answer ({what}) within "
                                         f"{target.timeout:g} s: {msg}; retry when it is back") from None
        if kind == "invalid":
            raise ConfigError(f"Milvus at {target.where} refused {what} as an invalid request (retrying "
                              f"will not help): {msg}") from None
        raise ConfigError(f"Milvus at {target.where} refused {what}: {msg}") from None
