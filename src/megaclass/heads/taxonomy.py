"""Taxonomy files: which group each class belongs to (for the hierarchical head).

Two formats, one meaning (class -> group path):

* JSON object: ``{"parrot": "animal/bird", "sparrow": ["animal", "bird"], "oak": "plant"}``
  (a list is a path of levels; it is joined with ``/`` -- deeper trees collapse to two
  levels: the group is everything above the class).
* CSV rows ``class,level1[,level2,...]`` (an optional header row starting with ``class``).

Every class of the model must have a group, and every class the file names must exist;
otherwise :class:`~megaclass.heads.base.TaxonomyError` lists the offenders.

Example
-------
>>> import json, tempfile, os
>>> path = os.path.join(tempfile.mkdtemp(), "tax.json")
>>> _ = open(path, "w").write(json.dumps({"a": "x", "b": ["x"], "c": "y"}))
>>> load_taxonomy(path, ["a", "b", "c"])
([0, 0, 1], ['x', 'y'])
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

from ..errors import TaxonomyError


def _read(path: Path) -> dict[str, str]:
    try:
        text = path.read_text()
    except OSError as exc:
        raise TaxonomyError(f"cannot read taxonomy file {path}: {exc}") from exc
    mapping: dict[str, str] = {}
    if path.suffix.lower() == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise TaxonomyError(f"taxonomy file {path} is not valid JSON: {exc}") from exc
        if not isinstance(data, dict):
            raise TaxonomyError(f"taxonomy file {path} must hold a JSON object class -> group")
        for cls, group in data.items():
            if isinstance(group, list) and all(isinstance(g, str) for g in group):
                group = "/".join(group)
            if not isinstance(group, str):
                raise TaxonomyError(f"taxonomy {path}: group of {cls!r} must be a string or list of strings")
            mapping[str(cls)] = group
    else:
        rows = [r for r in csv.reader(text.splitlines()) if r and any(c.strip() for c in r)]
        if rows and rows[0][0].strip().lower() == "class":
            rows = rows[1:]
        for n, row in enumerate(rows, 1):
            if len(row) < 2:
                raise TaxonomyError(f"taxonomy {path}: row {n} needs class,group, got {row}")
            cls = row[0].strip()
            if cls in mapping:
                raise TaxonomyError(f"taxonomy {path}: class {cls!r} is listed twice")
            mapping[cls] = "/".join(c.strip() for c in row[1:] if c.strip())
    empty = [c for c, g in mapping.items() if not g.strip()]
    if empty:
        raise TaxonomyError(f"taxonomy {path}: empty group for {empty[:5]}")
    return mapping


def load_taxonomy(path: str | os.PathLike, class_names: list[str]) -> tuple[list[int], list[str]]:
    """``(group index per class, group names)`` for ``class_names`` from a JSON/CSV file."""
    path = Path(path)
    mapping = _read(path)
    names = [str(c) for c in class_names]
    known = set(names)
    unknown = sorted(set(mapping) - known)
    if unknown:
        raise TaxonomyError(f"taxonomy {path} names {len(unknown)} unknown classes, e.g. {unknown[:5]}")
    missing = [c for c in names if c not in mapping]
    if missing:
        raise TaxonomyError(f"taxonomy {path} leaves {len(missing)} classes without a group, "
                            f"e.g. {missing[:5]}")
    group_names = sorted(set(mapping.values()))
    index = {g: i for i, g in enumerate(group_names)}
    return [index[mapping[c]] for c in names], group_names
