"""The ``>>>`` examples of ``megaclass.gallery`` run as doctests (issue 16 part 5); examples
marked ``+SKIP`` need files or a model and are shown, not run. Other packages' examples
are to follow."""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest

import megaclass.gallery

SKIP = {"megaclass.gallery.commands"}  # the CLI: its examples are shell lines
MODULES = sorted(m.name for m in pkgutil.iter_modules(megaclass.gallery.__path__, "megaclass.gallery.")
                 if not m.ispkg and m.name not in SKIP)


@pytest.mark.parametrize("name", ["megaclass.gallery", *MODULES])
def test_doctests(name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # examples that write files write them here
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples failed in {name}"
