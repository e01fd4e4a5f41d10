"""Validation of embedding vectors at the gallery boundary (one place, typed errors)."""

from __future__ import annotations

import math

import numpy as np

from ..errors import DimensionMismatchError, EmptyClassError, InvalidInputError


def as_unit_vectors(vectors, dim: int, *, allow_empty: bool = False) -> np.ndarray:
    """Validate embeddings and return them L2-normalised as a ``(n, dim)`` float32 array.

    Accepts numpy arrays, nested lists, or tensors (anything with ``.detach()``, converted
    via ``.detach().cpu().numpy()``). A single ``(dim,)`` vector is one row.

    Raises EmptyClassError (no rows), DimensionMismatchError (wrong dim), InvalidInputError
    (not numeric, not 1-D/2-D, NaN/inf, zero vector).

    Examples
    --------
    >>> as_unit_vectors([3.0, 4.0], dim=2)
    array([[0.6, 0.8]], dtype=float32)
    """
    return unit_rows(as_rows(vectors, dim, allow_empty=allow_empty))


def as_rows(vectors, dim: int, *, allow_empty: bool = False) -> np.ndarray:
    """First half of :func:`as_unit_vectors`: convert and check type and shape only."""
    if hasattr(vectors, "detach"):
        vectors = vectors.detach().cpu().numpy()
    try:
        arr = np.asarray(vectors)
    except (ValueError, TypeError) as exc:
        raise InvalidInputError(f"vectors are not a numeric array: {exc}") from exc
    if arr.dtype.kind not in "fiu":
        raise InvalidInputError(f"vectors must be numeric, got dtype {arr.dtype}")
    if arr.ndim == 1:
        arr = arr.reshape(1, -1) if arr.size else arr.reshape(0, dim)
    if arr.ndim != 2:
        raise InvalidInputError(f"vectors must be 1-D or 2-D (n, dim), got shape {arr.shape}")
    if arr.shape[1] != dim:
        raise DimensionMismatchError(f"expected vectors of dim {dim}, got dim {arr.shape[1]}")
    if arr.shape[0] == 0 and not allow_empty:
        raise EmptyClassError("no vectors given (need at least one template)")
    return arr


def unit_rows(arr: np.ndarray) -> np.ndarray:
    """Second half of :func:`as_unit_vectors`: finite, non-zero, L2-normalised float32.

    Float32 inputs are normalised in float32 (the hot path of bulk enrolls and searches):
    a finite, non-zero float32 norm proves every entry finite. Other dtypes, and float32
    rows whose squared norm overflows or underflows, go through float64 and its checks,
    where each row is first divided by its largest magnitude: any finite, non-zero row is
    then normalised exactly (``[1e300] * 128``, whose squared norm overflows even float64,
    was once stored as an all-zero template; subnormal rows were refused as zero).
    """
    with np.errstate(over="ignore", under="ignore", invalid="ignore"):
        if arr.dtype == np.float32 and arr.shape[0] == 1:  # one query: skip the ufunc machinery
            norm = math.sqrt(float(np.dot(arr[0], arr[0])))
            if math.isfinite(norm) and norm > 1e-18:
                return arr * np.float32(1.0 / norm)
        if arr.dtype == np.float32:  # fast path: a finite, non-zero norm means every entry is finite
            norms = np.sqrt(np.einsum("ij,ij->i", arr, arr))[:, None]
            if np.isfinite(norms).all() and (norms > 1e-18).all():
                return arr * (np.float32(1.0) / norms)
    wide = arr.astype(np.float64)
    if not np.isfinite(wide).all():
        finite = np.isfinite(wide)
        rows = np.flatnonzero(~finite.all(axis=1)).tolist()
        kinds = [name for name, bad in (("NaN", np.isnan(wide).any()),
                                         ("inf", np.isinf(wide).any())) if bad]
        raise InvalidInputError(f"vectors contain {'/'.join(kinds)} (rows {rows[:10]})")
    scale = np.abs(wide).max(axis=1, keepdims=True) if wide.shape[1] else np.zeros((len(wide), 1))
    if not (scale > 0).all():
        rows = np.flatnonzero(scale[:, 0] <= 0).tolist()
        raise InvalidInputError(f"zero vector cannot be normalised (rows {rows[:10]})")
    wide /= scale  # entries in [-1, 1], one of them +-1: the norm is in [1, sqrt(dim)]
    norms = np.sqrt(np.einsum("ij,ij->i", wide, wide))[:, None]
    out = np.empty(wide.shape, np.float32)
    np.divide(wide, norms, out=out, casting="unsafe")
    return out


def unit_rows_of_items(labels: list[str], rows: list[np.ndarray]) -> np.ndarray:
    """:func:`unit_rows` of many items' rows at once; on failure, name the first bad item."""
    if not rows:
        return np.empty((0, 0), np.float32)
    try:
        return unit_rows(np.concatenate(rows))
    except InvalidInputError:
        for i, r in enumerate(rows):
            try:
                unit_rows(r)
            except InvalidInputError as exc:
                raise type(exc)(f"item {i} ({labels[i]!r}): {exc}") from exc
        raise
