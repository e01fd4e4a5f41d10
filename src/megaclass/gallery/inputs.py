"""Validation of what callers hand a gallery: labels, class meta, enroll items.

Everything is checked before anything is written, and errors name the item at fault.
"""

from __future__ import annotations

import json
import unicodedata
from collections.abc import Iterable

import numpy as np

from ..errors import DuplicateLabelError, InvalidInputError
from .vectors import as_rows, unit_rows_of_items


def check_label(label, what: str = "label") -> str:
    """A label to look up: a non-empty string (lenient, so older labels can be erased)."""
    if not isinstance(label, str) or not label:
        raise InvalidInputError(f"{what} must be a non-empty string, got {label!r}")
    return label


def check_new_label(label) -> str:
    """A label to enroll: non-empty, and free of control characters (Unicode category Cc:
    newlines, tabs, NUL, DEL, C1 controls), which no URL path, form field, terminal table
    or log line carries faithfully.

    >>> check_new_label("a\\tb")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    megaclass.errors.InvalidInputError: label 'a\\tb' contains control characters (U+0009); ...
    """
    label = check_label(label)
    bad = sorted({ch for ch in label if unicodedata.category(ch) == "Cc"})
    if bad:
        codes = ", ".join(f"U+{ord(ch):04X}" for ch in bad)
        raise InvalidInputError(f"label {label!r} contains control characters ({codes}); "
                                "use printable characters only")
    return label


def check_meta(meta, what: str = "class meta") -> dict:
    """``meta`` (class meta by default, ``what`` names it) as a JSON round-tripped copy (None: empty)."""
    if meta is None:
        return {}
    if not isinstance(meta, dict):
        raise InvalidInputError(f"{what} must be a dict, got {type(meta).__name__}")
    try:
        return json.loads(json.dumps(meta, allow_nan=False))
    except (TypeError, ValueError) as exc:
        raise InvalidInputError(f"{what} is not JSON-serialisable: {exc}") from exc


def enroll_items(items: Iterable[tuple], dim: int, *, label_check=None
                 ) -> tuple[list[str], np.ndarray, np.ndarray, list[dict]]:
    """``(label, vectors[, meta])`` items -> ``(labels, unit rows, rows per item, metas)``.

    ``label_check`` replaces :func:`check_new_label` (a backend with its own label limits).
    """
    check_new = label_check or check_new_label
    labels: list[str] = []
    rows: list[np.ndarray] = []
    metas: list[dict] = []
    seen: set[str] = set()
    for i, item in enumerate(items):
        if not isinstance(item, tuple | list) or len(item) not in (2, 3):
            raise InvalidInputError(f"item {i}: expected (label, vectors[, meta])")
        label = check_new(item[0])
        if label in seen:
            raise DuplicateLabelError(f"item {i}: label {label!r} appears twice in batch")
        try:
            rows.append(as_rows(item[1], dim))
            metas.append(check_meta(item[2] if len(item) == 3 else None))
        except InvalidInputError as exc:
            raise type(exc)(f"item {i} ({label!r}): {exc}") from exc
        labels.append(label)
        seen.add(label)
    vectors = unit_rows_of_items(labels, rows) if rows else np.empty((0, dim), np.float32)
    counts = np.fromiter((len(r) for r in rows), dtype=np.int64, count=len(rows))
    return labels, vectors, counts, metas
