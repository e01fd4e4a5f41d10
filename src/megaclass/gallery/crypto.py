"""Encryption at rest for gallery templates: AES-256-GCM (``cryptography``).

When a key is configured, every template vector in ``gallery.db`` and the whole index
snapshot are stored as ``nonce (12 bytes) || ciphertext || tag (16 bytes)``. The
associated data binds each ciphertext to its gallery and row (gallery uuid + template
id), so a blob copied to another row or gallery fails authentication instead of
decrypting to a wrong template. A key-check blob in the gallery's ``meta`` table makes a
wrong key fail at open with a clear error, never with garbage search results.

Keys are 32 random bytes, given as a key file (raw 32 bytes, or 64 hex characters, or
base64) or in the environment: ``MEGACLASS_GALLERY_KEY`` (hex or base64) or
``MEGACLASS_GALLERY_KEY_FILE`` (a path).

Example
-------
>>> c = TemplateCipher(generate_key())
>>> c.decrypt(c.encrypt(b"vector bytes", b"aad"), b"aad")
b'vector bytes'
"""

from __future__ import annotations

import base64
import binascii
import os
import secrets
from pathlib import Path

from ..errors import EncryptionKeyError

ALGORITHM = "AES-256-GCM"
KEY_ENV = "MEGACLASS_GALLERY_KEY"
KEY_FILE_ENV = "MEGACLASS_GALLERY_KEY_FILE"
_NONCE = 12
_CHECK_PLAINTEXT = b"megaclass gallery key check v1"


def generate_key() -> bytes:
    """32 random bytes from the OS CSPRNG."""
    return secrets.token_bytes(32)


def _parse_key(raw: bytes, where: str) -> bytes:
    if len(raw) == 32:
        return raw
    text = raw.strip()
    if len(text) == 64:
        try:
            return binascii.unhexlify(text)
        except binascii.Error:
            pass
    try:
        key = base64.b64decode(text, validate=True)
    except binascii.Error:
        key = b""
    if len(key) != 32:
        raise EncryptionKeyError(
            f"{where}: a gallery key must be 32 bytes (raw, 64 hex characters or base64)")
    return key


def resolve_key(key: bytes | str | os.PathLike | None) -> bytes | None:
    """The key to use: an explicit key/key file, else the environment, else None."""
    if isinstance(key, bytes):
        return _parse_key(key, "key")
    if key is not None:
        path = Path(key)
        try:
            raw = path.read_bytes()
        except OSError as exc:
            raise EncryptionKeyError(f"cannot read key file {path}: {exc.strerror or exc}") from None
        return _parse_key(raw, f"key file {path}")
    if os.environ.get(KEY_FILE_ENV):
        return resolve_key(Path(os.environ[KEY_FILE_ENV]))
    if os.environ.get(KEY_ENV):
        return _parse_key(os.environ[KEY_ENV].encode(), f"${KEY_ENV}")
    return None


class TemplateCipher:
    """AES-256-GCM with a fresh random nonce per message."""

    def __init__(self, key: bytes) -> None:
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        self._aead = AESGCM(_parse_key(key, "key"))

    def encrypt(self, plaintext: bytes, aad: bytes) -> bytes:
        nonce = secrets.token_bytes(_NONCE)
        return nonce + self._aead.encrypt(nonce, plaintext, aad)

    def decrypt(self, blob: bytes, aad: bytes) -> bytes:
        from cryptography.exceptions import InvalidTag

        try:
            return self._aead.decrypt(blob[:_NONCE], blob[_NONCE:], aad)
        except (InvalidTag, ValueError):
            raise EncryptionKeyError(
                "decryption failed: wrong gallery key, or the data was altered") from None

    def key_check(self, gallery_uuid: str) -> str:
        """A hex blob that only this key decrypts (stored in the gallery meta)."""
        return self.encrypt(_CHECK_PLAINTEXT, gallery_uuid.encode()).hex()

    def verify_key_check(self, blob_hex: str, gallery_uuid: str, where: str) -> None:
        try:
            ok = self.decrypt(bytes.fromhex(blob_hex), gallery_uuid.encode()) == _CHECK_PLAINTEXT
        except (EncryptionKeyError, ValueError):
            ok = False
        if not ok:
            raise EncryptionKeyError(f"{where}: wrong key for this encrypted gallery")

    @staticmethod
    def row_aad(gallery_uuid: str, template_id: int) -> bytes:
        return gallery_uuid.encode() + int(template_id).to_bytes(8, "little")
