"""Errors of the Milvus gallery (subclasses of :mod:`megaclass.errors`, so callers that
catch the generic ones keep working)."""

from __future__ import annotations

from ...errors import ConfigError, EncryptionKeyError, MegaclassError, NotAGalleryError


class MilvusUnavailableError(MegaclassError, ConnectionError):
    """The Milvus server did not answer in time (down, restarting, unreachable). Retryable:
    a write that raised this was rolled back or stays hidden until repaired (see
    :mod:`megaclass.gallery.milvus`), so the same call may simply be repeated."""

    retryable = True


class MilvusAuthError(ConfigError, PermissionError):
    """Milvus refused the credentials (wrong or missing token / user:password)."""


class NotAMilvusGalleryError(NotAGalleryError):
    """A Milvus collection that megaclass did not create (or of another layout): refused
    and never modified."""


class MilvusVersionError(ConfigError):
    """A Milvus server too old for a feature megaclass uses."""


class MilvusKeyError(EncryptionKeyError):
    """An encryption key given for a Milvus gallery: Milvus stores vectors in clear, so
    encryption at rest is the storage layer's; megaclass refuses rather than ignore the key."""
