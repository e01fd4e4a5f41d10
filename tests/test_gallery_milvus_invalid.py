"""An invalid request to Milvus is a ConfigError naming the problem, never the retryable
MilvusUnavailableError nor MilvusAuthError: Milvus 2.3 answers most failures with the
catch-all code 65535 and a message that names the query node's "channel" (or, for a
filter it cannot parse, a "token"), words that also describe a server that is down. The
classification reads gRPC status codes, pymilvus exception classes and Milvus error codes
first (:func:`megaclass.gallery.milvus.connect.classify`). A server that is down stays
MilvusUnavailableError (here, and kill -9 in test_gallery_milvus_faults.py)."""

from __future__ import annotations

import itertools
import logging

import numpy as np
import pytest

pytest.importorskip("pymilvus")
grpc = pytest.importorskip("grpc")  # pymilvus needs it

from pymilvus.exceptions import MilvusException, ParamError  # noqa: E402

from _milvus_server import drop_gallery  # noqa: E402
from megaclass.errors import ConfigError  # noqa: E402
from megaclass.gallery.milvus import (  # noqa: E402
    MilvusAuthError,
    MilvusGallery,
    MilvusUnavailableError,
    parse_uri,
)
from megaclass.gallery.milvus.connect import calling, classify  # noqa: E402

logging.getLogger("pymilvus").setLevel(logging.CRITICAL)
_names = itertools.count()

# messages Milvus 2.3.5 (the ``milvus`` package's server) answered on this machine
METRIC = ("failed to search/query delegator 1 for channel by-dev-rootcoord-dml_1_4708v0: fail to "
          "Search, QueryNode ID=1, reason=collection:4708, metric type not match: invalid "
          "parameter[expected=IP][actual=L2]")
FILTER = ("failed to create query plan: cannot parse expression: label === 3, error: line 1:8 "
          "token recognition error at: '= '")
RANGE = ("failed to search/query delegator 1 for channel by-dev-rootcoord-dml_1_4708v0: fail to "
         "Search, QueryNode ID=1, reason=worker(1) query failed: Assert \"range_filter > radius\"")


class FakeRpcError(Exception):
    """The shape of a gRPC error (code() and details()) inside a pymilvus error's causes."""

    def __init__(self, code, details: str):
        super().__init__(details)
        self._code, self._details = code, details

    def code(self):
        return self._code

    def details(self):
        return self._details


def _wrapped(rpc: FakeRpcError, code=2, message="Fail connecting to server on h:1, illegal "
             "connection params or server unavailable") -> MilvusException:
    try:
        raise MilvusException(code, message) from rpc
    except MilvusException as exc:
        return exc


@pytest.mark.parametrize("exc, kind", [
    (MilvusException(65535, METRIC), "invalid"),          # "channel" and "invalid parameter"
    (MilvusException(65535, FILTER), "invalid"),          # "token" in a parse error, not credentials
    (MilvusException(65535, RANGE), "invalid"),           # a query node's assert on search params
    (MilvusException(1100, "invalid parameter[expected=...]: retry later"), "invalid"),  # the code decides
    (MilvusException(0, "anything", 5), "invalid"),       # old code IllegalArgument
    (MilvusException(65535, "x", is_input_error=True), "invalid"),
    (ParamError(message="channel timeout connect retry loading"), "invalid"),  # pymilvus's own check
    (MilvusException(2, "Fail connecting to server on h:1, illegal connection params or server "
                        "unavailable"), "down"),
    (MilvusException(101, "failed to query: collection not loaded[collection=1]"), "down"),
    (MilvusException(65535, "whatever", retriable=True), "down"),
    (MilvusException(grpc.StatusCode.DEADLINE_EXCEEDED, "[search] Retry timeout: 3s"), "down"),
    (_wrapped(FakeRpcError(grpc.StatusCode.UNAVAILABLE, "failed to connect to all addresses")), "down"),
    (_wrapped(FakeRpcError(grpc.StatusCode.UNAUTHENTICATED, "auth check failure")), "auth"),
    (_wrapped(FakeRpcError(grpc.StatusCode.INVALID_ARGUMENT, "channel closed, retry")), "invalid"),
    (MilvusException(1401, "privilege not permitted"), "auth"),
    (MilvusException(65535, "failed to search: node not found"), "down"),
    (MilvusException(65535, "something else entirely"), ""),
])
def test_classify_reads_structure_before_words(exc, kind):
    assert classify(exc) == kind


def test_calling_reports_an_invalid_request_as_not_retryable():
    t = parse_uri("milvus://db.example:19530/reg")
    for message, names in ((METRIC, "metric type not match"), (FILTER, "cannot parse expression"),
                           (RANGE, "range_filter > radius")):
        with pytest.raises(ConfigError) as got, calling(t, "search"):
            raise MilvusException(65535, message)
        assert not isinstance(got.value, MilvusUnavailableError | MilvusAuthError)
        text = str(got.value)
        assert names in text and "db.example:19530" in text and "invalid request" in text
        assert "retry when" not in text
    with pytest.raises(MilvusUnavailableError, match="retry when it is back"), calling(t, "search"):
        raise _wrapped(FakeRpcError(grpc.StatusCode.UNAVAILABLE, "failed to connect to all addresses"))


@pytest.fixture(params=["milvus-lite", "milvus-server"])
def gallery(request, tmp_path):
    if request.param == "milvus-lite":
        uri = f"milvus-lite://{tmp_path}/bad.db"
    else:
        uri = f"{request.getfixturevalue('milvus_server').uri_base}/bad{next(_names)}?timeout=5"
    g = MilvusGallery.open(uri, dim=8)
    x = np.random.default_rng(0).normal(size=(6, 8)).astype(np.float32)
    g.enroll_many([(f"c{i}", x[i:i + 1], {"k": i}) for i in range(6)])
    yield g, request.param == "milvus-lite"
    if not request.param == "milvus-lite":
        drop_gallery(g)
    g.close()


def _search(g, q, **kwargs):
    return g.link.call("search", g.link.client.search, g.name, data=q.tolist(), limit=1,
                       filter=kwargs.pop("filter", "id >= 0"), output_fields=["label"],
                       search_params={"metric_type": kwargs.pop("metric", "IP"),
                                      "params": kwargs.pop("params", {})})


def test_bad_requests_are_config_errors_on_lite_and_server(gallery):
    """Each is refused at once as a ConfigError naming the problem, on Milvus Lite and on the
    real server (where the old word lists called the first and the last MilvusUnavailableError,
    "retry when it is back", and the filter a credentials problem); the gallery still works."""
    g, lite = gallery
    q = g.templates("c0")
    with pytest.raises(ConfigError) as got:  # a filter Milvus cannot parse
        _search(g, q, filter="label === 3")
    assert not isinstance(got.value, MilvusUnavailableError | MilvusAuthError)
    assert "label === 3" in str(got.value) or "'='" in str(got.value)
    if not lite:  # Milvus Lite accepts these two (and answers nothing / searches anyway)
        with pytest.raises(ConfigError, match="metric type not match") as got:
            _search(g, q, metric="L2")
        assert not isinstance(got.value, MilvusUnavailableError)
        g.link.search_params = {"radius": 0.9, "range_filter": 0.1}  # the gallery's search params
        try:
            with pytest.raises(ConfigError, match="range_filter") as got:
                g.search(q, k=1)
            assert not isinstance(got.value, MilvusUnavailableError)
            assert "invalid request" in str(got.value)
        finally:
            g.link.search_params = {}
    assert g.search(q, k=1)[0][0].label == "c0"
