"""Every ``>>>`` example in ``megaclass`` runs as a doctest (issue 16 part 5): each module
whose source holds one is a test case. Examples marked ``+SKIP`` need files, a server or a
trained model and are shown, not run. The modules in ``SLOW`` train a model for a few
steps, run trials or draw plots (seconds to tens of seconds each on a shared 2-core box):
they are marked slow, so ``make test`` runs them and ``make test-fast`` does not."""

from __future__ import annotations

import doctest
import importlib
from pathlib import Path

import pytest

import megaclass

SRC = Path(megaclass.__file__).parent
SKIP = {"megaclass.gallery.commands"}  # the CLI: its examples are shell lines
SLOW = {"megaclass.evaluate.digits", "megaclass.evaluate.plots", "megaclass.evaluate.protocol",
        "megaclass.growth.state", "megaclass.growth.strategies", "megaclass.recognizer",
        "megaclass.train.trainer"}


def _module_name(path: Path) -> str:
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = sorted(name for path in SRC.rglob("*.py")
                 if ">>>" in path.read_text(encoding="utf-8")
                 and (name := _module_name(path)) not in SKIP)


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in SLOW else n
                                  for n in MODULES])
def test_doctests(name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # examples that write files write them here
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples failed in {name}"


def test_every_example_is_collected():
    """The modules found hold the examples: the gallery's and the rest of the package's."""
    assert "megaclass.gallery" in MODULES and "megaclass.gallery.faiss_api" in MODULES
    assert {"megaclass.heads.partial_fc", "megaclass.data.glyphs", "megaclass.recognizer"} <= set(MODULES)
    assert SLOW <= set(MODULES), "a module marked slow has no examples left"
