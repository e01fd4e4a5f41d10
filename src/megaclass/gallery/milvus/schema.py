"""The two Milvus collections of a megaclass gallery, how they are created, and how a
collection megaclass did not make is recognised (and then refused, never modified).

``NAME`` holds one row per template::

    id INT64 (auto) | label VARCHAR | vector FLOAT_VECTOR(dim) | meta JSON | model VARCHAR
    | w INT64 (the write that stored it) | seq INT64 (order within the write) | head BOOL
      (the class's first row: counts and lists classes)

``NAME__megaclass`` holds the gallery's own records (key -> JSON): the marker naming the
layout, dim and salt, the settings (threshold, model fingerprint, index), and the write
journal (see :mod:`.journal`). Milvus needs a vector field in every collection: a 2-d
dummy that is never searched.

Index (``index=`` in the URI): ``auto`` (FLAT, exact, until :meth:`MilvusGallery.tune`
moves a gallery of ``AUTO_HNSW_AT`` templates or more to HNSW and fits ``ef`` to recall@1
>= 0.99), ``FLAT``, ``HNSW`` or ``IVF_FLAT``.
"""

from __future__ import annotations

import math

from ...errors import ConfigError, DimensionMismatchError
from .errors import NotAMilvusGalleryError

FORMAT = "megaclass-milvus-gallery"
VERSION = 1
META_SUFFIX = "__megaclass"
LABEL_BYTES = 1024
FIELDS = {"id": "INT64", "label": "VARCHAR", "vector": "FLOAT_VECTOR", "meta": "JSON",
          "model": "VARCHAR", "w": "INT64", "seq": "INT64", "head": "BOOL"}
META_FIELDS = {"key": "VARCHAR", "value": "JSON", "vec": "FLOAT_VECTOR"}
INDEXES = ("auto", "FLAT", "HNSW", "IVF_FLAT")
# templates: from here ``auto`` tunes to HNSW. Measured on the real server with real
# embeddings (docs/bench/milvus_auto_threshold.md): through the gallery, FLAT answers in
# 1.10-1.20x HNSW's time at 25-35k templates, 1.35x at 50k, 1.46x at 100k and 2.1x at 200k,
# while HNSW at tune()'s own ef keeps recall@1 0.996-1.000 against exact search
AUTO_HNSW_AT = 50_000
HNSW_BUILD = {"M": 16, "efConstruction": 200}


def index_params(kind: str, n_templates: int = 0) -> tuple[str, dict]:
    """Milvus index type and build params for ``kind`` at ``n_templates``."""
    if kind not in INDEXES:
        raise ConfigError(f"index= must be one of {INDEXES}, got {kind!r}")
    if kind == "auto":
        kind = "HNSW" if n_templates >= AUTO_HNSW_AT else "FLAT"
    if kind == "HNSW":
        return kind, dict(HNSW_BUILD)
    if kind == "IVF_FLAT":
        return kind, {"nlist": int(min(65536, max(16, 4 * math.sqrt(max(n_templates, 1)))))}
    return kind, {}


def create(client, name: str, dim: int, kind: str, timeout: float) -> None:
    """Create the template collection (index ``kind``), loaded, one shard."""
    from pymilvus import DataType, MilvusClient

    schema = MilvusClient.create_schema(auto_id=True, enable_dynamic_field=False)
    schema.add_field("id", DataType.INT64, is_primary=True)
    schema.add_field("label", DataType.VARCHAR, max_length=LABEL_BYTES)
    schema.add_field("vector", DataType.FLOAT_VECTOR, dim=dim)
    schema.add_field("meta", DataType.JSON)
    schema.add_field("model", DataType.VARCHAR, max_length=512)
    schema.add_field("w", DataType.INT64)
    schema.add_field("seq", DataType.INT64)
    schema.add_field("head", DataType.BOOL)
    index_type, params = index_params(kind)
    ip = client.prepare_index_params()
    ip.add_index(field_name="vector", index_type=index_type, metric_type="IP", params=params)
    client.create_collection(name, schema=schema, index_params=ip, num_shards=1,
                             consistency_level="Session", timeout=timeout)


def create_meta(client, name: str, timeout: float) -> None:
    """Create the records collection (settings, marker, journal), loaded."""
    from pymilvus import DataType, MilvusClient

    schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
    schema.add_field("key", DataType.VARCHAR, is_primary=True, max_length=512)
    schema.add_field("value", DataType.JSON)
    schema.add_field("vec", DataType.FLOAT_VECTOR, dim=2)
    ip = client.prepare_index_params()
    ip.add_index(field_name="vec", index_type="FLAT", metric_type="L2")
    client.create_collection(name, schema=schema, index_params=ip, num_shards=1,
                             consistency_level="Session", timeout=timeout)


def _fields(desc: dict) -> dict:
    return {f["name"]: getattr(f["type"], "name", str(f["type"])) for f in desc.get("fields", [])}


def check_layout(client, name: str, where: str, timeout: float, dim: int | None) -> int:
    """The dim of an existing template collection that megaclass made; refuse any other."""
    desc = client.describe_collection(name, timeout=timeout)
    fields = _fields(desc)
    if fields != FIELDS:
        raise NotAMilvusGalleryError(
            f"Milvus collection {name!r} at {where} was not created by megaclass (fields "
            f"{sorted(fields)}): refused, left unchanged; use another collection name")
    vec = next(f for f in desc["fields"] if f["name"] == "vector")
    have = int(vec["params"]["dim"])
    if dim is not None and dim != have:
        raise DimensionMismatchError(f"Milvus gallery {name!r} at {where} has dim {have}, got dim={dim}: "
                                     "refused, left unchanged")
    return have


def check_meta_layout(client, name: str, where: str, timeout: float) -> None:
    if _fields(client.describe_collection(name, timeout=timeout)) != META_FIELDS:
        raise NotAMilvusGalleryError(f"Milvus collection {name!r} at {where} was not created by "
                                     "megaclass: refused, left unchanged")
