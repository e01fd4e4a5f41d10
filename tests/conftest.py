"""Shared fixtures: a tiny trained encoder (session-scoped, seconds to train)."""

from __future__ import annotations

import pytest
import torch

torch.set_num_threads(2)


@pytest.fixture(scope="session")
def tiny_encoder():
    from megaclass import GlyphSource, train_encoder

    return train_encoder(GlyphSource(range(100), samples_per_class=16), head="cosface", steps=200,
                         batch_size=64, dim=32, widths=(16, 32), progress=False, num_workers=0)


@pytest.fixture(scope="session")
def tiny_model_dir(tiny_encoder, tmp_path_factory):
    path = tmp_path_factory.mktemp("model")
    tiny_encoder.save(path)
    return path


@pytest.fixture(scope="session")
def milvus_server(tmp_path_factory):
    """One real Milvus standalone server (the ``milvus`` package's binary) for the session,
    on free ports with its own data directory, authorization on (``server.token``,
    ``server.uri_base`` carry the credentials); stopped at the end. Skipped without the
    package (``make setup`` installs it)."""
    pytest.importorskip("milvus")
    pytest.importorskip("pymilvus")
    from _milvus_server import MilvusProcess

    server = MilvusProcess(tmp_path_factory.mktemp("milvus"), authorization_enabled=True)
    server.start()
    yield server
    server.stop()
