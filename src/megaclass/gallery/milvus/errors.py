"""Errors of the Milvus gallery: defined in :mod:`megaclass.errors` with every other error
class (subclasses of the generic ones, so callers that catch those keep working)."""

from __future__ import annotations

from ...errors import (
    MilvusAuthError,
    MilvusKeyError,
    MilvusUnavailableError,
    MilvusVersionError,
    NotAMilvusGalleryError,
)

__all__ = ["MilvusUnavailableError", "MilvusAuthError", "NotAMilvusGalleryError", "MilvusVersionError",
           "MilvusKeyError"]
