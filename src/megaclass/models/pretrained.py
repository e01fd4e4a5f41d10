"""Models shipped inside the package, loadable by name (``-m reference``).

A name is looked up only when no file or folder of that name exists, so a local
``./reference/`` model directory still wins. The weights are safetensors + JSON like any
model directory; each has a ``CARD.md`` (data, recipe, steps, time, machine, results) and
its training log.

Example
-------
>>> sorted(SHIPPED)
['reference', 'reference-v1', 'reference-v2']
>>> resolve_model_path("some/dir").as_posix()
'some/dir'
"""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import ModelFormatError

#: Shipped model names -> one-line description.
SHIPPED: dict[str, str] = {
    "reference": "the reference glyph encoder (recipe 'reference'; see its CARD.md)",
    "reference-v1": "the reference glyph encoder until 2026-12-01, 128-d (recipe 'reference-v1'); "
                    "the model the benchmarks' recorded numbers were measured with",
    "reference-v2": "the second reference glyph encoder (2026-12-01, one block per stage, 256-d; "
                    "recipe 'reference-v2')",
}

PRETRAINED_DIR = Path(__file__).parent / "pretrained"


def shipped_dir(name: str) -> Path:
    """The directory of shipped model ``name`` inside the installed package."""
    return PRETRAINED_DIR / name


def resolve_model_path(path: str | os.PathLike) -> Path:
    """``path`` itself when it exists or is not a shipped name; else the shipped model's directory."""
    p = Path(path)
    name = os.fspath(path)
    if p.exists() or name not in SHIPPED:
        return p
    d = shipped_dir(name)
    if not (d / "model.safetensors").is_file():
        raise ModelFormatError(f"the shipped model {name!r} is not in this installation ({d} has no "
                               f"model.safetensors); reinstall megaclass or give a model directory")
    return d
