"""Shared fixtures: a tiny trained encoder (session-scoped, and kept between sessions in
pytest's cache folder while the package's sources are unchanged)."""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

import pytest
import torch

torch.set_num_threads(2)

TINY_RECIPE = {"head": "cosface", "steps": 200, "batch_size": 64, "dim": 32, "widths": (16, 32)}


def _tiny_encoder_key() -> str:
    """What the tiny encoder depends on: every source file of the package, torch's version
    and the recipe. Any edit under src/megaclass trains it again (conservative on purpose)."""
    h = hashlib.sha256(f"{torch.__version__} {sorted(TINY_RECIPE.items())}".encode())
    spec = importlib.util.find_spec("megaclass")
    assert spec is not None and spec.origin is not None, "megaclass is not installed"
    src = Path(spec.origin).parent
    for path in sorted(src.rglob("*.py")):
        h.update(path.relative_to(src).as_posix().encode())
        h.update(path.read_bytes())
    return h.hexdigest()[:20]


def _keep_newest(folder: Path, n: int) -> None:
    """Remove all but the ``n`` most recently written entries of ``folder``."""
    def mtime(p: Path) -> float:
        try:
            return p.stat().st_mtime
        except OSError:  # removed meanwhile by another session
            return 0.0
    for stale in sorted(folder.iterdir(), key=mtime, reverse=True)[n:]:
        shutil.rmtree(stale, ignore_errors=True)


@pytest.fixture(scope="session")
def tiny_encoder(request):
    """CosFace, 200 steps on 100 glyph classes, shared by the session's tests (none may change
    it: its fingerprint is checked at the end of the session).

    Training takes 15-60 s on the shared 2-core box; the encoder is saved under
    ``.pytest_cache`` and later sessions load it (0.02 s) while ``_tiny_encoder_key()`` holds.
    Training is deterministic, so the loaded encoder is the one training gives (a fresh one
    had the cached one's fingerprint). ``pytest --cache-clear`` or ``-p no:cacheprovider`` trains it afresh.
    Measured on test_evaluate_roc + test_recognizer + test_digits, alternated with the
    uncached fixture at load 9-12: 0.47x the wall time with the copy in place (250 vs 532 s
    over seven pairs, median pair 0.47x); a miss costs what training costs.
    """
    from megaclass import GlyphSource, train_encoder
    from megaclass.errors import ModelFormatError
    from megaclass.models import Encoder

    cache = getattr(request.config, "cache", None)
    folder = Path(cache.mkdir("tiny_encoder")) / _tiny_encoder_key() if cache is not None else None
    encoder = None
    if folder is not None and folder.is_dir():
        try:
            encoder = Encoder.load(folder)
        except ModelFormatError:  # not a whole model: train it again
            shutil.rmtree(folder, ignore_errors=True)
    if encoder is None:
        encoder = train_encoder(GlyphSource(range(100), samples_per_class=16), progress=False,
                                num_workers=0, **TINY_RECIPE)
        if folder is not None:  # written beside, then renamed: a reader sees all of it or nothing
            tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=".tmp-"))
            encoder.save(tmp)
            try:
                os.replace(tmp, folder)
            except OSError:  # another session saved it first
                shutil.rmtree(tmp, ignore_errors=True)
            _keep_newest(folder.parent, 4)  # one copy per state of the sources: not every edit's
    fingerprint = encoder.fingerprint()
    yield encoder
    assert encoder.fingerprint() == fingerprint and not encoder.training, \
        "a test changed the shared tiny_encoder (weights, config or eval mode)"


@pytest.fixture(scope="session")
def tiny_model_dir(tiny_encoder, tmp_path_factory):
    path = tmp_path_factory.mktemp("model")
    tiny_encoder.save(path)
    return path


@pytest.fixture(scope="session")
def milvus_server(tmp_path_factory):
    """One real Milvus standalone server (the ``milvus`` package's binary) for the session,
    on free ports with its own data directory, authorization on (``server.token``,
    ``server.uri_base`` carry the credentials); stopped at the end. Skipped without the
    package (``make setup`` installs it)."""
    pytest.importorskip("milvus")
    pytest.importorskip("pymilvus")
    from _milvus_server import running

    yield from running(tmp_path_factory.mktemp("milvus"), authorization_enabled=True)
