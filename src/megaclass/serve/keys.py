"""API keys with roles, stored hashed in the gallery database.

A key is shown once, when it is created: ``mck_<id>.<secret>`` where ``id`` is 8 hex
characters (public, used in the audit log) and ``secret`` 32 random bytes (URL-safe
base64). Only ``sha256(secret)`` is stored: the secret is a uniformly random 256-bit
value, so a fast hash is enough (no salt or key stretching is needed for it, unlike a
password). Lookups compare hashes with :func:`hmac.compare_digest`.

Roles are ordered: ``reader`` (identify, verify, stats, read classes) <
``enroller`` (also enroll, add, erase) < ``admin`` (also keys and audit).

Example
-------
>>> keys = KeyStore(ServiceDB("gallery/"))            # doctest: +SKIP
>>> info, token = keys.add("ci", "reader")            # doctest: +SKIP
>>> keys.authenticate(token).role                     # doctest: +SKIP
'reader'
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import asdict, dataclass

from ..errors import ConfigError, UnknownLabelError
from .db import ServiceDB, now

ROLES = ("reader", "enroller", "admin")
_TOKEN = re.compile(r"^mck_([0-9a-f]{8})\.([A-Za-z0-9_-]{20,100})$")


def role_allows(role: str, needed: str) -> bool:
    """True when ``role`` is at least ``needed`` in reader < enroller < admin."""
    return ROLES.index(role) >= ROLES.index(needed)


def claimed_key_id(token: str | None) -> str | None:
    """The key id a token claims (its public part), whether or not the token is valid."""
    match = _TOKEN.match(token or "")
    return match.group(1) if match else None


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


@dataclass(frozen=True)
class KeyInfo:
    """A stored key without its secret."""

    id: str
    name: str
    role: str
    created_at: str
    revoked_at: str | None = None

    @property
    def active(self) -> bool:
        return self.revoked_at is None

    def to_dict(self) -> dict:
        return {**asdict(self), "active": self.active}


class KeyStore:
    """Create, list, revoke and check API keys (table ``api_keys``)."""

    def __init__(self, db: ServiceDB):
        self.db = db

    def add(self, name: str, role: str) -> tuple[KeyInfo, str]:
        """Create a key; returns its info and the token (shown once, never stored)."""
        if role not in ROLES:
            raise ConfigError(f"role must be one of {', '.join(ROLES)}; got {role!r}")
        if not isinstance(name, str) or not name.strip() or len(name) > 200:
            raise ConfigError("key name must be a non-empty string of at most 200 characters")
        secret = secrets.token_urlsafe(32)
        with self.db.transaction() as conn:
            while True:
                key_id = secrets.token_hex(4)
                if conn.execute("SELECT 1 FROM api_keys WHERE id = ?", (key_id,)).fetchone() is None:
                    break
            created = now()
            conn.execute("INSERT INTO api_keys (id, name, role, secret_sha256, created_at) "
                         "VALUES (?, ?, ?, ?, ?)", (key_id, name.strip(), role, _digest(secret), created))
        return KeyInfo(key_id, name.strip(), role, created), f"mck_{key_id}.{secret}"

    def list(self, include_revoked: bool = True) -> list[KeyInfo]:
        """All keys (oldest first), without secrets."""
        rows = self.db.query("SELECT id, name, role, created_at, revoked_at FROM api_keys "
                             "ORDER BY created_at, id")
        keys = [KeyInfo(*r) for r in rows]
        return keys if include_revoked else [k for k in keys if k.active]

    def revoke(self, key_id: str) -> KeyInfo:
        """Revoke a key at once (its next request gets 401); UnknownLabelError if no such key."""
        with self.db.transaction() as conn:
            row = conn.execute("SELECT id, name, role, created_at, revoked_at FROM api_keys "
                               "WHERE id = ?", (key_id,)).fetchone()
            if row is None:
                raise UnknownLabelError(f"no API key with id {key_id!r}")
            if row[4] is None:
                conn.execute("UPDATE api_keys SET revoked_at = ? WHERE id = ?", (now(), key_id))
        return self.get(key_id)

    def get(self, key_id: str) -> KeyInfo:
        rows = self.db.query("SELECT id, name, role, created_at, revoked_at FROM api_keys "
                             "WHERE id = ?", (key_id,))
        if not rows:
            raise UnknownLabelError(f"no API key with id {key_id!r}")
        return KeyInfo(*rows[0])

    def authenticate(self, token: str | None) -> KeyInfo | None:
        """The active key matching ``token``, else None (missing, malformed, unknown, revoked)."""
        match = _TOKEN.match(token or "")
        if match is None:
            return None
        key_id, secret = match.groups()
        rows = self.db.query("SELECT id, name, role, created_at, revoked_at, secret_sha256 "
                             "FROM api_keys WHERE id = ?", (key_id,))
        if not rows or not hmac.compare_digest(rows[0][5], _digest(secret)):
            return None
        info = KeyInfo(*rows[0][:5])
        return info if info.active else None
