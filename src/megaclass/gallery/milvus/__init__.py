"""The gallery on Milvus: a Milvus server or cluster (``milvus://host:port/collection``)
or Milvus Lite, embedded in one file (``milvus-lite://./register.db``), behind the same
:class:`~megaclass.gallery.GalleryProtocol` as the local SQLite + FAISS gallery.

Semantics (what a caller can rely on):

- **Acknowledged.** A write (enroll, enroll_many, add_templates, erase, set_setting) has
  returned only after Milvus acknowledged every insert/delete it made, i.e. after they
  were appended to Milvus's write-ahead log (rocksmq on a standalone server; Pulsar, Kafka
  or Woodpecker in a cluster). From then on the write survives a crash of the client and
  of the Milvus processes (tested: ``kill -9`` of the server mid enroll loop, 20 cycles);
  surviving the loss of the machine is the log's replication, a cluster setting.
- **All or nothing.** Milvus has no multi-row transaction, so every write is journaled in
  the gallery's records collection (:mod:`.records`): rows of a write that has not ended
  are hidden from every read, and a write that failed is rolled back at once, or, if the
  server is gone, on this client's next write, on the next open by any writer once its
  lease (5 min) ran out, or by :meth:`MilvusGallery.recover`. A raised error therefore
  means "not applied", except in one case: the server applied the final journal delete but
  the answer was lost, where the write is complete and a retry gets DuplicateLabelError.
  Errors while the server is down are MilvusUnavailableError (retryable), raised within
  the URI's ``timeout`` (10 s by default): no call hangs. A request Milvus rejects as
  invalid (a search or index parameter, a filter it cannot parse) is a ConfigError naming
  the problem, never the retryable error (:func:`.connect.classify` reads gRPC status
  codes, pymilvus's exception classes and Milvus's error codes before any words).
- **Reads after writes.** Reads use Milvus's ``Session`` consistency by default: a client
  reads its own acknowledged writes at once; other clients see them within Milvus's time
  tick (about 200 ms; "Bounded" staleness). ``consistency=Strong`` in the URI makes every
  read wait for all writes acknowledged anywhere before it (measured here: ~200 ms per
  search on a standalone server, against ~5 ms for Session), which is also what makes the
  journal's hiding exact for writes of *other* clients still in flight; a crashed write is
  hidden either way once the journal record is visible, a time tick after it was written.
  Label uniqueness is checked by the writer, not enforced by Milvus: run one writing
  process per gallery (the service), many readers.
- **Class search.** Milvus returns templates; the gallery asks for ``4k`` (or more until
  ``k`` distinct classes are found, up to Milvus's 16,384) and keeps each class's best
  template, so several templates per class collapse to one result (exact with FLAT, as
  good as the index's recall otherwise). ``where=`` filters run inside Milvus on the
  class meta (a JSON field).
- **Erasure.** :meth:`erase` hides the class at once (a journal record), deletes its rows
  (Milvus tombstones) and ends the write; :meth:`compact` flushes, compacts and verifies.
  Bytes of deleted rows leave Milvus's storage when the compacted segments' old files are
  garbage collected (``dataCoord.gc.dropTolerance``) and the log's retention expires
  (``rocksmq.retentionTimeInMinutes`` / the cluster log's retention): set both as short
  as your erasure policy requires. The service's audit log keeps only
  :meth:`erased_tag` hashes of erased labels, as with the local gallery.
- **Security.** Milvus stores vectors in clear: encryption at rest is the storage layer's
  (encrypted volumes for etcd, the log and MinIO/S3; S3 server-side encryption with KMS),
  so ``key=`` / ``--key-file`` is refused (MilvusKeyError). Authentication: a token or
  ``user:password`` (``token=``, ``--milvus-token``, ``$MEGACLASS_MILVUS_TOKEN``); TLS
  with ``?tls=1`` (``ca=``, ``cert=``, ``key=`` for private CAs and mutual TLS).
"""

from .connect import is_milvus_uri, parse_uri
from .errors import (
    MilvusAuthError,
    MilvusKeyError,
    MilvusUnavailableError,
    MilvusVersionError,
    NotAMilvusGalleryError,
)
from .gallery import MilvusGallery

__all__ = ["MilvusAuthError", "MilvusGallery", "MilvusKeyError", "MilvusUnavailableError",
           "MilvusVersionError", "NotAMilvusGalleryError", "is_milvus_uri", "parse_uri"]
