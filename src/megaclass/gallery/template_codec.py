"""A template's stored bytes: what ``templates.vector`` in ``gallery.db`` holds.

A template is ``dim`` float32 values, little-endian. In a gallery with a key the bytes are
sealed with AES-256-GCM (:class:`~megaclass.gallery.crypto.TemplateCipher`) and bound to
the gallery's uuid and the template's id, so a blob copied to another row or gallery fails
authentication instead of decoding to a wrong template.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import numpy as np

from ..errors import NotAGalleryError
from .crypto import TemplateCipher

__all__ = ["VECTOR_DTYPE", "TemplateCodec"]

#: how a template's values are stored: float32, little-endian
VECTOR_DTYPE = np.dtype("<f4")


class TemplateCodec:
    """Encodes templates to the bytes a gallery stores and decodes them back.

    Parameters
    ----------
    dim : int
        Values per template.
    gallery_uuid : str
        The gallery's uuid (part of each sealed row's associated data).
    cipher : TemplateCipher or None
        The gallery's key; None stores templates in clear.
    where : str
        What to name in the error raised for a blob of the wrong length (the database path).

    Examples
    --------
    >>> import numpy as np
    >>> from megaclass.gallery.crypto import TemplateCipher, generate_key
    >>> codec = TemplateCodec(2, "uuid-1", TemplateCipher(generate_key()))
    >>> ids, vecs = np.array([7, 8]), np.array([[0.6, 0.8], [1.0, 0.0]], dtype=np.float32)
    >>> blobs = list(codec.encode(ids, vecs))
    >>> len(blobs[0]) > 8  # sealed: nonce + ciphertext + tag
    True
    >>> codec.decode([7, 8], blobs).tolist()
    [[0.6000000238418579, 0.800000011920929], [1.0, 0.0]]
    """

    def __init__(self, dim: int, gallery_uuid: str, cipher: TemplateCipher | None = None, *,
                 where: str = "gallery"):
        self.dim = dim
        self.gallery_uuid = gallery_uuid
        self.cipher = cipher
        self.where = where

    def encode(self, ids: np.ndarray, vecs: np.ndarray) -> Iterator[bytes]:
        """The stored bytes of templates ``vecs`` with ids ``ids`` (float32 LE, encrypted and
        bound to the gallery and the id when the gallery has a key)."""
        data = np.ascontiguousarray(vecs, dtype=VECTOR_DTYPE)
        blobs = (r.tobytes() for r in data)
        if self.cipher is not None:
            c, u = self.cipher, self.gallery_uuid
            blobs = (c.encrypt(b, c.row_aad(u, i)) for i, b in zip(ids.tolist(), blobs, strict=True))
        return blobs

    def decode(self, ids: Iterable[int], blobs: list[bytes]) -> np.ndarray:
        """The ``(len(blobs), dim)`` float32 templates stored as ``blobs`` under ``ids``;
        NotAGalleryError when one has the wrong length, EncryptionKeyError when one fails
        authentication."""
        if self.cipher is not None:
            c, u = self.cipher, self.gallery_uuid
            blobs = [c.decrypt(b, c.row_aad(u, i)) for i, b in zip(ids, blobs, strict=True)]
        nbytes = self.dim * VECTOR_DTYPE.itemsize
        if any(len(b) != nbytes for b in blobs):
            raise NotAGalleryError(f"{self.where}: damaged template vector (wrong byte length)")
        return np.frombuffer(b"".join(blobs), dtype=VECTOR_DTYPE).reshape(len(blobs), self.dim).astype(
            np.float32)
