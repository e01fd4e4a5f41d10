"""Every error class lives in megaclass/errors.py (issue 16 part 4), each mapped to an HTTP status."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import megaclass
from megaclass import errors

SRC = Path(megaclass.__file__).parent


def _is_error(node: ast.ClassDef) -> bool:
    names = [b.id if isinstance(b, ast.Name) else b.attr if isinstance(b, ast.Attribute) else ""
             for b in node.bases]
    return any(n.endswith(("Error", "Exception")) for n in names)


def test_no_error_class_is_defined_outside_errors_py():
    """Public error classes only: a private control-flow exception (``_Cancelled``) may stay."""
    outside = [f"{path.relative_to(SRC)}:{node.lineno} {node.name}"
               for path in sorted(SRC.rglob("*.py")) if path.name != "errors.py" or path.parent != SRC
               for node in ast.walk(ast.parse(path.read_text(), str(path)))
               if isinstance(node, ast.ClassDef) and _is_error(node) and not node.name.startswith("_")]
    hint = "define these in megaclass/errors.py (re-export them where they were):\n"
    assert outside == [], hint + "\n".join(outside)


def test_every_error_class_has_a_status():
    from megaclass.serve.http_errors import status_of

    classes = [c for _, c in inspect.getmembers(errors, inspect.isclass)
               if issubclass(c, errors.MegaclassError)]
    assert len(classes) > 20
    statuses = {c.__name__: status_of(c("x")) for c in classes}
    assert all(400 <= s < 600 and s != 500 for s in statuses.values()), statuses
    assert statuses["GalleryClosedError"] == statuses["StoreBusyError"] == 503
    assert statuses["ModelMismatchError"] == 409 and statuses["MilvusUnavailableError"] == 503
