"""What one write transaction of the store did, handed to the derived state after the commit."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Change:
    """What one write transaction did: the index and label maps apply it after the commit.

    ``labels`` / ``class_ids`` are the classes written (enrolled, replaced, added to, or
    with ``erased`` removed); ``added`` are the template ids inserted with their class in
    ``added_class``; ``removed`` the template ids deleted (int64 arrays).
    """

    labels: list[str]
    class_ids: np.ndarray
    added: np.ndarray
    added_class: np.ndarray
    removed: np.ndarray
    erased: bool = False
