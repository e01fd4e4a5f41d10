"""Model upgrades without losing the gallery: re-make every template with a new model.

:func:`reembed` re-extracts each class's templates with the new model from its original
samples (:mod:`.sample_sources`: a folder of class folders, built-in glyphs, or the samples
retained at enrollment) and *stages* them beside the live ones in the same database
(``reembed_templates`` / ``reembed_classes``, see :mod:`.provenance`), a few hundred classes
per commit. Searches keep answering from the live templates (old model) meanwhile.

When every class is staged, the new index is built in memory from the staged rows, and
ONE transaction swaps the templates, the class meta, the model fingerprint and dim, and
drops the old model's threshold (it does not fit the new scores: calibrate again); the
new index snapshot is written right after. A crash (kill -9) at any point therefore
leaves the old gallery with the staged work kept (run it again to resume: only classes
not staged yet are embedded) or the new one, never a mix; ``tests/test_gallery_reembed.py``
kills real processes at random points to check it.

While a re-embed runs: a second one on the same gallery is refused (a file lock, released
by the kernel if the process dies); enrolls, replacements and sample additions (old model)
go on, and the classes they touch are staged again before the switch; an erased class
leaves the staged set in the same commit (foreign-key cascade). A class the source lacks
is refused by name before anything is written, or with ``allow_missing`` erased at the
switch (it cannot stay: its old template would answer next to new-model ones).

Example
-------
>>> from megaclass.gallery import Gallery                                   # doctest: +SKIP
>>> with Gallery.open("faces") as g:                                        # doctest: +SKIP
...     g.reembed("models/v2", "photos/")     # folder of class folders
{'status': 'switched', 'classes': 5000, 'model': '3fa1...', ...}
"""

from __future__ import annotations

import fcntl
import json
import os
import signal
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..errors import ConfigError, InvalidInputError, NotAGalleryError
from . import provenance
from .index import ClassIndex
from .snapshot import INDEX_META, INDEX_NAME
from .template_codec import TemplateCodec

if TYPE_CHECKING:  # pragma: no cover
    from .gallery import Gallery

STATE_KEY = "reembed"  # meta: the re-embed in progress {"model", "dim", "source", "started_at"}
DONE_KEY = "reembedded"  # meta: the last switch {"from_model", "model", "at", "threshold_dropped"}
DROPPED_KEYS = ("threshold", "calibration")  # settings of the old model's scores
LOCK_NAME = "reembed.lock"
CHUNK_CLASSES = 256  # classes embedded and staged per commit (a kill loses at most one chunk)
CHUNK_IMAGES = 4096  # images per forward pass
CRASH_ENV = "MEGACLASS_REEMBED_CRASH_AT"  # test hook: SIGKILL self at a named point
# (``staged:<k>`` after the k-th staged chunk, ``before-switch``, ``after-switch``)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds")


def _crash_point(name: str) -> None:
    """Fault injection for the kill -9 tests: ``$MEGACLASS_REEMBED_CRASH_AT=name``."""
    if os.environ.get(CRASH_ENV) == name:
        os.kill(os.getpid(), signal.SIGKILL)


@contextmanager
def _exclusive(path: Path) -> Iterator[None]:
    """One re-embed per gallery at a time (an flock: the kernel drops it if the process dies)."""
    fd = os.open(path / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            other = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            raise ConfigError(f"another re-embed of {path} is running (pid {other}): wait for it, "
                              "or stop it and run this again to resume") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        yield
    finally:
        os.close(fd)


def status(gallery: Gallery) -> dict:
    """The re-embed in progress, if any: ``{"in_progress", "model", "staged_classes", "classes"}``."""
    with gallery.state.session() as store:
        c = store.connection
        state = store.get_meta(STATE_KEY)
        staged = int(c.execute("SELECT COUNT(*) FROM reembed_classes").fetchone()[0])
        return {"in_progress": state is not None, **(state or {}), "staged_classes": staged,
                "classes": store.class_count(), "gallery_model": gallery.state.model,
                "last_switch": store.get_meta(DONE_KEY)}


def abort(gallery: Gallery) -> int:
    """Discard a re-embed in progress (its staged templates); returns the classes it had staged."""
    gallery.state.check_writable()
    with _exclusive(gallery.path), gallery.state.session() as store, store.transaction() as c:
        n = int(c.execute("SELECT COUNT(*) FROM reembed_classes").fetchone()[0])
        c.execute("DELETE FROM reembed_templates")
        c.execute("DELETE FROM reembed_classes")
        c.execute("DELETE FROM meta WHERE key = ?", (STATE_KEY,))
    return n


def reembed(gallery: Gallery, model, source=None, *, allow_missing: bool = False,
            progress: Callable[[int, int], None] | None = None, chunk_classes: int = CHUNK_CLASSES,
            skip_bad_files: bool = False) -> dict:
    """Re-make every template of ``gallery`` with ``model`` and switch to it atomically.

    ``model``: an encoder or a model directory. ``source``: a folder of class folders,
    ``"glyphs:A-B"`` (see :class:`.sample_sources.GlyphSamples` for its options), a
    sample source object, or None for the samples retained at enrollment
    (``enroll --retain-samples``). Resumable: run it again after a crash. A model of
    another dimension is allowed (the new index has the new dim). ``progress(done,
    total)`` is called after each staged chunk. Returns a report (``status``:
    ``"switched"`` or ``"already"``; classes, templates, dropped classes, seconds).

    Raises ConfigError (another model's re-embed in progress, a second re-embed running,
    no source of samples), InvalidInputError (classes missing from the source, naming
    them, unless ``allow_missing``).
    """
    from .sample_sources import open_samples

    encoder = _load(model)
    gallery.state.check_writable()
    fp, dim, dim_before = encoder.fingerprint(), int(encoder.dim), gallery.dim
    started = time.perf_counter()
    with _exclusive(gallery.path):
        with gallery.state.session() as store:
            state = store.get_meta(STATE_KEY)
            current = gallery.state.model
        if state is not None and state.get("model") != fp:
            raise ConfigError(f"a re-embed of {gallery.path} to model {state.get('model')} is in progress; "
                              f"resume it with that model, or abort it first (--abort), before "
                              f"re-embedding with {fp}")
        if state is None and current == fp and not gallery.template_models().keys() - {fp}:
            return {"status": "already", "model": fp, "classes": len(gallery), "seconds": 0.0}
        samples = open_samples(source, gallery, encoder.input_spec, skip_bad_files=skip_bad_files)
        have = samples.labels()
        missing = [lb for lb in gallery.labels() if lb not in have]
        _refuse_missing(missing, samples, allow_missing, "")
        if state is None:
            with gallery.state.session() as store:
                store.set_meta(STATE_KEY, {"model": fp, "dim": dim, "source": samples.describe(),
                                           "started_at": _now()})
        mode = gallery.get_setting("template_mode") or "mean"
        staged, report = 0, None
        while report is None:  # a write between the last chunk and the switch: stage it, retry
            staged += _stage_all(gallery, encoder, samples, have, missing, allow_missing, mode,
                                 chunk_classes, progress)
            for label in missing:  # allow_missing: they cannot stay beside new-model templates
                if label in gallery:
                    gallery.erase(label)
            report = _switch(gallery, fp, dim, current)
    report.update(staged=staged, dropped_classes=missing, dim_before=dim_before,
                  seconds=time.perf_counter() - started,
                  source=samples.describe())
    return report


def _load(model):
    if isinstance(model, str | os.PathLike):
        from ..models import load_encoder

        return load_encoder(model).eval()
    if not (hasattr(model, "fingerprint") and hasattr(model, "embed") and hasattr(model, "dim")):
        raise ConfigError(f"model must be an encoder or a model directory, got {type(model).__name__}")
    return model.eval() if hasattr(model, "eval") else model


def _refuse_missing(missing: list[str], samples, allow_missing: bool, when: str) -> None:
    if missing and not allow_missing:
        shown = ", ".join(missing[:10]) + (f" and {len(missing) - 10} more" if len(missing) > 10 else "")
        raise InvalidInputError(f"the source {samples.describe()} lacks {len(missing)} classes the "
                                f"gallery holds{when}: {shown} (add their samples, or pass "
                                "allow_missing=True to erase them at the switch)")


def _pending(gallery: Gallery, skip: set[str]) -> list[tuple[int, str]]:
    """Classes whose new templates are not staged, or were staged before the class changed."""
    with gallery.state.session() as store:
        rows = store.connection.execute(
            "SELECT c.id, c.label FROM classes c LEFT JOIN reembed_classes s ON s.class_id = c.id "
            "WHERE s.class_id IS NULL OR s.updated_at != c.updated_at ORDER BY c.id").fetchall()
    return [(int(i), lb) for i, lb in rows if lb not in skip]


def _stage_all(gallery: Gallery, encoder, samples, have: set[str], missing: list[str],
               allow_missing: bool, mode: str, chunk: int, progress) -> int:
    """Embed and stage pending classes until none is left (enrolls meanwhile add more).
    A class enrolled meanwhile that the source lacks joins ``missing`` or is refused
    (the staged work is kept for a resume)."""
    done = chunks = 0
    while pending := _pending(gallery, set(missing)):
        new = [lb for _, lb in pending if lb not in have]
        if new:
            _refuse_missing(new, samples, allow_missing, " (enrolled during the re-embed)")
            missing += new
            continue
        total = done + len(pending)
        for at in range(0, len(pending), chunk):
            part = pending[at: at + chunk]
            _stage_chunk(gallery, encoder, samples, part, mode)
            done += len(part)
            if progress is not None:
                progress(done, total)
            chunks += 1
            _crash_point(f"staged:{chunks}")
    return done


def _embed(encoder, batches: list) -> list[np.ndarray]:
    """Per-class embeddings of ready image batches (one forward pass per ~CHUNK_IMAGES)."""
    import torch

    out: list[np.ndarray] = []
    at = 0
    while at < len(batches):
        group: list = []
        n = 0
        while at < len(batches) and (not group or n + len(batches[at]) <= CHUNK_IMAGES):
            group.append(batches[at])
            n += len(batches[at])
            at += 1
        with torch.inference_mode():
            vecs = encoder.embed(torch.cat(group)).numpy()
        bounds = np.cumsum([0] + [len(b) for b in group])
        out += [vecs[a:b] for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
    return out


def _stage_chunk(gallery: Gallery, encoder, samples, part: list[tuple[int, str]], mode: str) -> None:
    from ..recognizer import INTERNAL_META, class_templates

    cids = [cid for cid, _ in part]
    with gallery.state.session() as store:  # the classes' state before embedding: re-checked at commit
        before = {int(i): (u, json.loads(m)) for i, u, m in store.connection.execute(
            f"SELECT id, updated_at, meta FROM classes WHERE id IN ({','.join('?' * len(cids))})", cids)}
    part = [(cid, lb) for cid, lb in part if cid in before]
    vectors = _embed(encoder, samples.batches([lb for _, lb in part]))
    made = []
    for (cid, _), vecs in zip(part, vectors, strict=True):
        meta = {k: v for k, v in before[cid][1].items() if k not in INTERNAL_META}
        tmpl, meta = class_templates(vecs, mode, meta)
        norms = np.linalg.norm(tmpl, axis=1, keepdims=True)
        if not np.all(np.isfinite(tmpl)) or np.any(norms < 1e-12):
            raise InvalidInputError(f"the new model made an unusable embedding for class {cid}")
        made.append((cid, (tmpl / norms).astype(np.float32), meta))
    fp = encoder.fingerprint()
    with gallery.state.session() as store, store.transaction() as c:
        now = dict(c.execute(f"SELECT id, updated_at FROM classes WHERE id IN ({','.join('?' * len(cids))})",
                             cids).fetchall())
        made = [m for m in made if now.get(m[0]) == before[m[0]][0]]  # changed meanwhile: next round
        if not made:
            return
        c.executemany("DELETE FROM reembed_templates WHERE class_id = ?", [(m[0],) for m in made])
        n = sum(len(m[1]) for m in made)
        first = _reserve_ids(c, n)
        ids = np.arange(first, first + n, dtype=np.int64)
        owner = np.repeat([m[0] for m in made], [len(m[1]) for m in made])
        vecs = np.concatenate([m[1] for m in made])
        mid = provenance.model_id(c, fp)
        c.executemany("INSERT INTO reembed_templates (id, class_id, model, vector) VALUES (?, ?, ?, ?)",
                      zip(ids.tolist(), owner.tolist(), [mid] * n, store.codec.encode(ids, vecs),
                          strict=True))
        c.executemany("INSERT OR REPLACE INTO reembed_classes (class_id, updated_at, meta) VALUES (?, ?, ?)",
                      [(cid, before[cid][0], json.dumps(meta)) for cid, _, meta in made])


def _reserve_ids(c, n: int) -> int:
    """Reserve ``n`` template ids from the store's AUTOINCREMENT sequence; returns the first
    (staged rows get their final ids: their sealed bytes are bound to them)."""
    row = c.execute("SELECT seq FROM sqlite_sequence WHERE name = 'templates'").fetchone()
    top = max(int(row[0]) if row else 0,
              int(c.execute("SELECT COALESCE(MAX(id), 0) FROM templates").fetchone()[0]),
              int(c.execute("SELECT COALESCE(MAX(id), 0) FROM reembed_templates").fetchone()[0]))
    if row is None:
        c.execute("INSERT INTO sqlite_sequence (name, seq) VALUES ('templates', ?)", (top + n,))
    else:
        c.execute("UPDATE sqlite_sequence SET seq = ? WHERE name = 'templates'", (top + n,))
    return top + 1


def _staged_reader(store, dim: int):
    """``read()`` for :meth:`ClassIndex.build` over the staged templates (decrypted), and the
    count and id sum that the switch checks are unchanged."""
    reader = store.reader()
    reader.connection.execute("BEGIN")  # one snapshot for every pass of the build
    conn, codec = reader.connection, TemplateCodec(dim, store.uuid, store.cipher)
    n, idsum = conn.execute("SELECT COUNT(*), COALESCE(SUM(id), 0) FROM reembed_templates").fetchone()

    def read():
        cur = conn.execute("SELECT id, vector FROM reembed_templates ORDER BY id")
        while rows := cur.fetchmany(1 << 14):
            ids = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
            try:
                vecs = codec.decode(ids.tolist(), [r[1] for r in rows])
            except NotAGalleryError:  # a blob of another length
                raise InvalidInputError(
                    "staged re-embed templates have another dim than the model's") from None
            yield ids, vecs

    return reader, read, int(n), int(idsum)


def _switch(gallery: Gallery, fp: str, dim: int, old_fp: str | None) -> dict | None:
    """Build the new index beside the old one, then swap everything in one commit. None if
    the gallery changed meanwhile (the caller stages the changed classes and comes back)."""
    with gallery.state.session() as store:
        requested = store.get_meta("index") or "auto"
        reader, read, n, idsum = _staged_reader(store, dim)
    try:
        index = ClassIndex.build(dim, read, n, spec=requested)
    finally:
        reader.close()
    with gallery.state.session() as store:
        for name in (INDEX_NAME, INDEX_META):  # the old snapshot: stale from the commit on
            (gallery.path / name).unlink(missing_ok=True)
        gallery.state.snapshot_stale()
        _crash_point("before-switch")
        with store.transaction() as c:
            left = c.execute("SELECT COUNT(*) FROM classes c LEFT JOIN reembed_classes s "
                             "ON s.class_id = c.id "
                             "WHERE s.class_id IS NULL OR s.updated_at != c.updated_at").fetchone()[0]
            now = tuple(c.execute("SELECT COUNT(*), COALESCE(SUM(id), 0) FROM reembed_templates").fetchone())
            if left or now != (n, idsum):
                return None
            report = _commit_switch(c, store, fp, dim, old_fp)
        _crash_point("after-switch")
        index.save(gallery.path, gallery_uuid=store.uuid, seq=store.last_seq(), cipher=store.cipher)
        gallery.state.reload()  # the snapshot just written: new dim, model, labels and index
    report.update(templates=index.ntotal, index=index.spec)
    return report


def _commit_switch(c, store, fp: str, dim: int, old_fp: str | None) -> dict:
    now = _now()
    labels = [r[0] for r in c.execute("SELECT label FROM classes ORDER BY id")]
    c.execute("DELETE FROM templates")
    c.execute("INSERT INTO templates (id, class_id, vector, model) "
              "SELECT id, class_id, vector, model FROM reembed_templates")
    c.execute("UPDATE samples SET updated_at = ?1 WHERE updated_at = "  # retained samples stay current
              "(SELECT c.updated_at FROM classes c WHERE c.id = samples.class_id)", (now,))
    c.execute("UPDATE classes SET updated_at = ?, meta = "
              "(SELECT s.meta FROM reembed_classes s WHERE s.class_id = classes.id)", (now,))
    c.executemany("INSERT INTO ops (op, label, ts) VALUES ('enroll', ?, ?)", [(lb, now) for lb in labels])
    dropped = {k: store.get_meta(k) for k in DROPPED_KEYS if store.get_meta(k) is not None}
    c.executemany("DELETE FROM meta WHERE key = ?", [(k,) for k in (*DROPPED_KEYS, STATE_KEY)])
    done = {"from_model": old_fp, "model": fp, "at": now, "dropped_settings": sorted(dropped),
            "threshold_dropped": dropped.get("threshold")}
    c.executemany("INSERT OR REPLACE INTO meta VALUES (?, ?)",
                  [(provenance.MODEL_KEY, json.dumps(fp)), ("dim", json.dumps(dim)),
                   (DONE_KEY, json.dumps(done))])
    c.execute("DELETE FROM reembed_templates")
    c.execute("DELETE FROM reembed_classes")
    return {"status": "switched", "model": fp, "from_model": old_fp, "dim": dim, "classes": len(labels),
            "dropped_settings": sorted(dropped)}
