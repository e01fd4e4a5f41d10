"""Which model made each template, and the tables a re-embed and retained samples use.

A gallery records the fingerprint of the model that made its templates in its ``meta``
(``model_fingerprint``, set by the :class:`~megaclass.recognizer.Recognizer`). This module
adds the per-template record and the side tables of :mod:`.reembed`:

* ``models``: ``id`` -> ``fingerprint``; ``templates.model`` names the row (``0``: not
  recorded, e.g. vectors enrolled through the raw :class:`Gallery` API with no model set);
* ``reembed_classes`` / ``reembed_templates``: a re-embed's new templates and class meta,
  staged beside the live ones (never searched) until the switch;
* ``samples``: samples retained at enrollment (``enroll --retain-samples``), sealed with
  the gallery key like templates.

Every side table references ``classes(id) ON DELETE CASCADE``: erasing a class removes
its staged templates and retained samples in the same commit.

Galleries made before this module are migrated on their first writable open, in O(1):
``templates.model`` is added with the id of the gallery's fingerprint as its default, so
existing rows read as made by the gallery's model without rewriting them.
"""

from __future__ import annotations

import sqlite3

MODEL_KEY = "model_fingerprint"  # the gallery meta entry naming the model of its templates
UNRECORDED = 0  # templates.model of rows written with no model recorded

_TABLES = (
    "CREATE TABLE IF NOT EXISTS models (id INTEGER PRIMARY KEY, fingerprint TEXT NOT NULL UNIQUE)",
    "CREATE TABLE IF NOT EXISTS reembed_classes (class_id INTEGER PRIMARY KEY "
    "REFERENCES classes(id) ON DELETE CASCADE, updated_at TEXT NOT NULL, meta TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS reembed_templates (id INTEGER PRIMARY KEY, class_id INTEGER NOT NULL "
    "REFERENCES classes(id) ON DELETE CASCADE, model INTEGER NOT NULL, vector BLOB NOT NULL)",
    "CREATE INDEX IF NOT EXISTS reembed_templates_class ON reembed_templates(class_id)",
    "CREATE TABLE IF NOT EXISTS samples (id INTEGER PRIMARY KEY AUTOINCREMENT, class_id INTEGER NOT NULL "
    "REFERENCES classes(id) ON DELETE CASCADE, updated_at TEXT NOT NULL, data BLOB NOT NULL)",
    "CREATE INDEX IF NOT EXISTS samples_class ON samples(class_id)",
)


def has_provenance(conn: sqlite3.Connection) -> bool:
    """Whether ``templates.model`` exists (False: a gallery not migrated yet, opened read-only)."""
    return any(r[1] == "model" for r in conn.execute("PRAGMA table_info(templates)"))


def migrate(conn: sqlite3.Connection) -> None:
    """Add the tables and ``templates.model`` if missing (one transaction; no row rewritten)."""
    names = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    if has_provenance(conn) and {"models", "reembed_classes", "reembed_templates", "samples"} <= names:
        return
    conn.execute("BEGIN IMMEDIATE")
    try:
        for ddl in _TABLES:
            conn.execute(ddl)
        if not has_provenance(conn):
            default = model_id(conn, _meta_fingerprint(conn))  # existing rows: the gallery's model
            conn.execute(f"ALTER TABLE templates ADD COLUMN model INTEGER NOT NULL DEFAULT {int(default)}")
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise


def _meta_fingerprint(conn: sqlite3.Connection) -> str | None:
    row = conn.execute("SELECT json_extract(value, '$') FROM meta WHERE key = ?", (MODEL_KEY,)).fetchone()
    return row[0] if row and isinstance(row[0], str) and row[0] else None


def model_id(conn: sqlite3.Connection, fingerprint: str | None) -> int:
    """The ``models`` id of ``fingerprint`` (added if new); :data:`UNRECORDED` for None."""
    if not fingerprint:
        return UNRECORDED
    row = conn.execute("SELECT id FROM models WHERE fingerprint = ?", (fingerprint,)).fetchone()
    if row is not None:
        return int(row[0])
    rowid = conn.execute("INSERT INTO models (fingerprint) VALUES (?)", (fingerprint,)).lastrowid
    if rowid is None:  # sqlite3 sets lastrowid after every successful INSERT
        raise RuntimeError("SQLite gave no row id for the new model")
    return rowid


def current_model_id(conn: sqlite3.Connection) -> int:
    """The id of the model the gallery's meta names (inside a write transaction)."""
    return model_id(conn, _meta_fingerprint(conn))


def template_models(conn: sqlite3.Connection) -> dict[str, int]:
    """How many live templates each model made: ``{fingerprint or "unrecorded": count}``."""
    if not has_provenance(conn):  # read-only open of a gallery not migrated: all the gallery's
        n = int(conn.execute("SELECT COUNT(*) FROM templates").fetchone()[0])
        return {(_meta_fingerprint(conn) or "unrecorded"): n} if n else {}
    rows = conn.execute("SELECT COALESCE(m.fingerprint, 'unrecorded'), COUNT(*) FROM templates t "
                        "LEFT JOIN models m ON m.id = t.model GROUP BY t.model").fetchall()
    return {fp: int(n) for fp, n in rows}
