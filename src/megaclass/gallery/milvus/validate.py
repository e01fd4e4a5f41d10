"""Input checks at the Milvus gallery's boundary (labels, meta, enroll items): the same
rules and error types as the local gallery, plus Milvus's label length."""

from __future__ import annotations

import unicodedata

import numpy as np

from ...errors import InvalidInputError
from ..inputs import check_meta  # noqa: F401  (re-exported: the same rule for both backends)
from ..inputs import enroll_items as local_enroll_items
from .schema import LABEL_BYTES


def check_label(label, what: str = "label") -> str:
    """A non-empty string (a label to look up, or a setting key)."""
    if not isinstance(label, str) or not label:
        raise InvalidInputError(f"{what} must be a non-empty string, got {label!r}")
    return label


def check_new_label(label) -> str:
    """A label to enroll: no control characters, at most LABEL_BYTES UTF-8 bytes."""
    label = check_label(label)
    bad = sorted({f"U+{ord(ch):04X}" for ch in label if unicodedata.category(ch) == "Cc"})
    if bad:
        raise InvalidInputError(f"label {label!r} contains control characters ({', '.join(bad)}); "
                                "use printable characters only")
    if len(label.encode()) > LABEL_BYTES:
        raise InvalidInputError(f"label of {len(label.encode())} bytes: a Milvus gallery keeps at most "
                                f"{LABEL_BYTES}")
    return label


def enroll_items(items, dim: int) -> tuple[list[str], np.ndarray, np.ndarray, list[dict]]:
    """``(label, vectors[, meta])`` items -> ``(labels, unit rows, rows per item, metas)``,
    every item checked before anything is written (the local gallery's rules, Milvus's labels)."""
    return local_enroll_items(items, dim, label_check=check_new_label)
