"""No module of ``megaclass.gallery`` reaches into another object's private state: every
``x._name`` is on ``self`` / ``cls``, and nothing imports a ``_private`` name from a
sibling. Parts of a gallery are handed what they need (a GalleryState, a ClassIndex, a
TemplateClassMap) and use its public methods (issue 16 part 1)."""

from __future__ import annotations

import ast
from pathlib import Path

import megaclass.gallery

GALLERY = Path(megaclass.gallery.__file__).parent
# attributes set on FAISS's own SWIG objects to keep what they point to alive
ALLOWED = {"_keep"}


def _violations(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute):
            name = node.attr
            private = name.startswith("_") and not (name.startswith("__") and name.endswith("__"))
            owner = node.value.id if isinstance(node.value, ast.Name) else None
            if private and owner not in ("self", "cls") and name not in ALLOWED:
                out.append(f"{path.name}:{node.lineno}: {ast.unparse(node)}")
        elif isinstance(node, ast.ImportFrom) and node.level == 1:  # a gallery sibling's private name
            out += [f"{path.name}:{node.lineno}: from {'.' * node.level}{node.module or ''} "
                    f"import {a.name}" for a in node.names if a.name.startswith("_")]
    return out


def test_no_cross_module_private_access_in_gallery():
    found = [v for p in sorted(GALLERY.glob("*.py")) for v in _violations(p)]
    assert not found, "private access across objects:\n" + "\n".join(found)


def test_the_check_catches_what_it_should(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("from .class_search import _threads_for\n"
                   "def f(gallery):\n    return gallery._index, self_._x\n")
    assert len(_violations(bad)) == 3
