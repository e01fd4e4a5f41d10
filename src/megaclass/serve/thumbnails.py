"""Thumbnails of enrolled images, retained only when the enrolling request asks for it.

An operator comparing a probe with its candidates wants to see the enrolled face (or
object), not only a label and a score. The service therefore keeps, *opt-in per enroll /
add request* (``retain_thumbnails=true``), a few small JPEGs (longest side
:data:`THUMB_SIDE` px) of the images a class was enrolled from.

Storage: table ``thumbnails`` of the gallery's own database, keyed by the gallery's
class id (ids are never reused). When the gallery is encrypted, each thumbnail is sealed
like a template (AES-256-GCM, the gallery key, associated data = gallery uuid + row id),
so a copied blob does not decrypt elsewhere. Erasing a class deletes its thumbnails in
the same transaction (``gallery/store.py`` does it when this table exists), and a
replacing enroll drops the old ones. At most :data:`MAX_PER_CLASS` are kept per class
(the newest).

Example
-------
>>> thumbs = ThumbnailStore(ServiceDB("gallery/"), cipher=None, gallery_uuid="...")  # doctest: +SKIP
>>> thumbs.put("alice", [pil_image], replace=True)                                 # doctest: +SKIP
>>> thumbs.first(["alice"])["alice"][:3]                                            # doctest: +SKIP
b'\\xff\\xd8\\xff'
"""

from __future__ import annotations

import base64
import io
import json

from PIL import Image

from ..errors import ConfigError
from .db import ServiceDB, now

THUMB_SIDE = 96  # px, longest side: enough to recognise a face in a candidate list
MAX_PER_CLASS = 8
_PER_REQUEST = 4  # thumbnails kept from one enroll / add request (the first images)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS thumbnails (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    class_id INTEGER NOT NULL,
    image BLOB NOT NULL,
    created_at TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS thumbnails_class ON thumbnails(class_id);
"""


def make_thumbnail(image: Image.Image) -> bytes:
    """A JPEG of ``image`` whose longest side is at most :data:`THUMB_SIDE` pixels."""
    img = image.copy()
    if img.mode not in ("L", "RGB"):
        background = Image.new("RGB", img.size, "white")  # transparency on white, as for the model
        rgba = img.convert("RGBA")
        background.paste(rgba, mask=rgba.getchannel("A"))
        img = background
    img.thumbnail((THUMB_SIDE, THUMB_SIDE), Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=85)
    return buf.getvalue()


def data_url(jpeg: bytes) -> str:
    return "data:image/jpeg;base64," + base64.b64encode(jpeg).decode("ascii")


class ThumbnailStore:
    """Put, read and drop the thumbnails of enrolled classes.

    Parameters
    ----------
    db : the service's connection to the gallery database.
    cipher : the gallery's :class:`~megaclass.gallery.crypto.TemplateCipher` when the
        gallery is encrypted (thumbnails are then sealed), else None.
    gallery_uuid : the gallery's uuid (bound into each sealed thumbnail).
    unavailable : why thumbnails cannot be kept (an encrypted gallery whose key this
        service does not have); retention is then refused with this reason.
    """

    def __init__(self, db: ServiceDB, cipher, gallery_uuid: str, unavailable: str | None = None):
        self.db = db
        self.cipher = cipher
        self.uuid = gallery_uuid
        self.unavailable = unavailable
        with db.transaction() as conn:
            for statement in filter(str.strip, _SCHEMA.split(";")):
                conn.execute(statement)

    def _aad(self, row_id: int) -> bytes:
        return self.uuid.encode() + b"/thumbnail/" + int(row_id).to_bytes(8, "little")

    def put(self, label: str, images: list[Image.Image], *, replace: bool = False) -> int:
        """Keep thumbnails of the first images for the enrolled class ``label`` (the newest
        :data:`MAX_PER_CLASS` stay). ``replace`` drops the class's earlier ones. Returns
        how many were stored: 0 when the class no longer exists (erased meanwhile)."""
        if self.unavailable:
            raise ConfigError(self.unavailable)
        jpegs = [make_thumbnail(img) for img in images[:_PER_REQUEST]]
        with self.db.transaction() as conn:
            row = conn.execute("SELECT id FROM classes WHERE label = ?", (label,)).fetchone()
            if row is None:  # erased between its enroll and now: keep nothing of it
                return 0
            cid = row[0]
            if replace:
                conn.execute("DELETE FROM thumbnails WHERE class_id = ?", (cid,))
            for jpeg in jpegs:
                # the AUTOINCREMENT sequence, not max(id): an id is never handed out twice, so a
                # sealed blob stays bound to the one row it was written for
                next_id = conn.execute("SELECT coalesce((SELECT seq FROM sqlite_sequence WHERE name = "
                                       "'thumbnails'), 0) + 1").fetchone()[0]
                blob = self.cipher.encrypt(jpeg, self._aad(next_id)) if self.cipher else jpeg
                conn.execute("INSERT INTO thumbnails (id, class_id, image, created_at) VALUES (?, ?, ?, ?)",
                             (next_id, cid, blob, now()))
            conn.execute("DELETE FROM thumbnails WHERE class_id = ? AND id NOT IN (SELECT id FROM "
                         "thumbnails WHERE class_id = ? ORDER BY id DESC LIMIT ?)", (cid, cid, MAX_PER_CLASS))
        return len(jpegs)

    def drop(self, label: str) -> None:
        """Forget the thumbnails of ``label`` (a replacing enroll without retention)."""
        with self.db.transaction() as conn:
            conn.execute("DELETE FROM thumbnails WHERE class_id IN (SELECT id FROM classes WHERE label = ?)",
                         (label,))

    def _open(self, row_id: int, blob: bytes) -> bytes:
        return self.cipher.decrypt(blob, self._aad(row_id)) if self.cipher else blob

    def of(self, label: str) -> list[bytes]:
        """Every kept thumbnail of ``label`` (JPEG bytes, oldest first)."""
        rows = self.db.query("SELECT t.id, t.image FROM thumbnails t JOIN classes c ON c.id = t.class_id "
                             "WHERE c.label = ? ORDER BY t.id", (label,))
        return [self._open(i, blob) for i, blob in rows]

    def first(self, labels: list[str]) -> dict[str, bytes]:
        """The first kept thumbnail of each of ``labels`` that has one."""
        wanted = sorted(set(labels))
        if not wanted:
            return {}
        rows = self.db.query(
            "SELECT c.label, t.id, t.image FROM thumbnails t JOIN classes c ON c.id = t.class_id "
            f"WHERE c.label IN ({', '.join('?' * len(wanted))}) AND t.id = (SELECT min(id) FROM "
            "thumbnails WHERE class_id = c.id)", tuple(wanted))
        return {label: self._open(i, blob) for label, i, blob in rows}

    def counts(self, labels: list[str]) -> dict[str, int]:
        """How many thumbnails each of ``labels`` has (absent: none)."""
        if not labels:
            return {}
        rows = self.db.query(
            "SELECT c.label, count(*) FROM thumbnails t JOIN classes c ON c.id = t.class_id "
            f"WHERE c.label IN ({', '.join('?' * len(labels))}) GROUP BY c.label", tuple(labels))
        return dict(rows)


def open_thumbnails(db: ServiceDB, key) -> ThumbnailStore:
    """The thumbnail store of the gallery behind ``db``: sealed with the gallery key when the
    gallery is encrypted (``key`` as for Gallery.open, else the environment); when that
    key is not at hand, retention is refused with the reason."""
    from ..gallery.crypto import TemplateCipher, resolve_key

    meta = dict(db.query("SELECT key, value FROM meta WHERE key IN ('uuid', 'encryption')"))
    gallery_uuid = json.loads(meta["uuid"])
    encryption = json.loads(meta["encryption"]) if "encryption" in meta else None
    if encryption is None:
        return ThumbnailStore(db, None, gallery_uuid)
    raw = resolve_key(key)
    if raw is None:
        return ThumbnailStore(db, None, gallery_uuid, unavailable=(
            "this gallery is encrypted and the service was started without its key in hand, so "
            "it cannot seal thumbnails: enroll without retain_thumbnails"))
    cipher = TemplateCipher(raw)
    cipher.verify_key_check(encryption["key_check"], gallery_uuid, "thumbnails")
    return ThumbnailStore(db, cipher, gallery_uuid)


class NoThumbnails:
    """The thumbnail store of a gallery that keeps none (a Milvus gallery: its classes are
    not rows of the local database the thumbnails would refer to). Retention is refused
    with the reason; lookups find nothing."""

    def __init__(self, why: str):
        self.unavailable = why

    def put(self, label: str, images, *, replace: bool = False) -> int:
        raise ConfigError(self.unavailable)

    def drop(self, label: str) -> None:
        return None

    def of(self, label: str) -> list[bytes]:
        return []

    def first(self, labels: list[str]) -> dict[str, bytes]:
        return {}

    def counts(self, labels: list[str]) -> dict[str, int]:
        return {}
