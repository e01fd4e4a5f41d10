"""Typed errors raised by megaclass.

Every user-facing failure is a subclass of :class:`MegaclassError`, so callers
(and the CLI, which turns them into a one-line message and a non-zero exit) can
catch them in one place. Each also subclasses the closest builtin so ordinary
``except ValueError`` / ``except KeyError`` code keeps working. Every error class lives
here (the modules that raise them re-export them where they were before); the service
maps them to HTTP statuses in :mod:`megaclass.serve.http_errors`.
"""

from __future__ import annotations


class MegaclassError(Exception):
    """Base class of every error megaclass raises on purpose."""

    def __str__(self) -> str:  # KeyError quotes its message; keep it readable
        return str(self.args[0]) if self.args else self.__class__.__name__


class InvalidInputError(MegaclassError, ValueError):
    """Input that cannot be used: NaN/inf vectors, empty sample lists, bad shapes."""


class DimensionMismatchError(InvalidInputError):
    """A vector or model whose dimension differs from the gallery's."""


class EmptyClassError(InvalidInputError):
    """A class with zero samples or templates, or a folder with no images."""


class CorruptImageError(InvalidInputError):
    """An image file that cannot be decoded."""


class ImageTooLargeError(InvalidInputError):
    """An image over a pixel or side limit, refused before it is decoded."""


class PayloadTooLargeError(InvalidInputError):
    """A request over one of the service's size limits (HTTP 413)."""


class UnknownLabelError(MegaclassError, KeyError):
    """A label that is not enrolled (erase, verify, add_templates)."""


class DuplicateLabelError(MegaclassError, ValueError):
    """Enrolling a label that already exists without ``replace=True``."""


class NotAGalleryError(MegaclassError, ValueError):
    """A directory that is not a megaclass gallery (or is damaged beyond use)."""


class ModelFormatError(MegaclassError, ValueError):
    """A model directory that is missing files or holds an unsupported config."""


class ConfigError(MegaclassError, ValueError):
    """An invalid option: unknown head name, bad data spec, out-of-range parameter."""


class EncryptionKeyError(MegaclassError, PermissionError):
    """A missing, malformed or wrong encryption key for an encrypted gallery."""


class ReadOnlyGalleryError(MegaclassError, PermissionError):
    """A write to a gallery that is read-only: opened with ``read_only=True``, or whose
    directory or database this process may not write (a read-only mount, permissions)."""


class ModelMismatchError(ConfigError):
    """Queries of one model searched against templates another model made (e.g. a gallery
    re-embedded with a new model while a process still runs the old one; HTTP 409)."""


class NotCalibratedError(ConfigError):
    """An accept/reject decision asked of a gallery that has no calibrated threshold, and
    no threshold given (calibrate it, pass a threshold, or ask for candidates only)."""


class GalleryClosedError(MegaclassError):
    """A call on a gallery after :meth:`~megaclass.gallery.Gallery.close` (HTTP 503: the
    service is shutting down or reopening it)."""


class StoreBusyError(MegaclassError):
    """A write SQLite could not start or commit because another process held the gallery's
    write lock past the busy timeout (HTTP 503: retry)."""


class TaxonomyError(InvalidInputError):
    """A taxonomy (class -> group) file that is unreadable, names unknown classes or misses some."""


class InsufficientMemoryError(MegaclassError, MemoryError):
    """A head whose state (class centres + optimizer state) would not fit in available RAM."""


class DistributedError(MegaclassError, RuntimeError):
    """A distributed job that cannot go on: a rank died, hung or disagrees with the others."""


# -- the Milvus gallery backend (:mod:`megaclass.gallery.milvus`) ----------------------------
class MilvusUnavailableError(MegaclassError, ConnectionError):
    """The Milvus server did not answer in time (down, restarting, unreachable). Retryable:
    a write that raised this was rolled back or stays hidden until repaired (see
    :mod:`megaclass.gallery.milvus`), so the same call may simply be repeated (HTTP 503)."""

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
