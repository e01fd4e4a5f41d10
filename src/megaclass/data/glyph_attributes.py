"""Deterministic attributes of glyph classes, for per-group (demographic-style) evaluation.

A glyph class's shape is fixed by its id (:func:`~megaclass.data.glyphs.class_skeletons`),
so properties of that shape are attributes of the *class*, like the population group of
a person in a biometric gallery: ``evaluate --group-by strokes`` splits error rates by them.
Nothing here changes how a glyph renders.

Attributes (all strings, so they group like any class meta value):

- ``strokes``: ``"2"``, ``"3"`` or ``"4"`` pen strokes (about a third of classes each).
- ``style``: ``"flowing"``, ``"curved"`` or ``"angular"``, by the mean turning angle between
  successive control-point segments (< 0.87 rad, < 1.14 rad, above: terciles of ids 0-19999).
- ``complexity``: ``"simple"`` (<= 9 control points in all), ``"medium"`` (10-14) or
  ``"complex"`` (>= 15).

Examples
--------
>>> glyph_attributes([0, 1])[0].keys()
dict_keys(['strokes', 'style', 'complexity'])
>>> glyph_class_meta("glyph-7") == glyph_attributes([7])[0]
True
>>> glyph_class_meta("cat")
{}
"""

from __future__ import annotations

import re

import numpy as np

from .glyphs import class_skeletons

__all__ = ["GLYPH_ATTRIBUTES", "glyph_attributes", "glyph_class_meta"]

GLYPH_ATTRIBUTES = ("strokes", "style", "complexity")
_STYLE_CUTS = (0.87, 1.14)  # rad; terciles of the mean turning angle over class ids 0-19999
_COMPLEXITY_CUTS = (9, 14)  # total control points
_GLYPH_LABEL = re.compile(r"glyph-(\d{1,10})")


def _mean_turn(pts: np.ndarray, n_pts: np.ndarray, active: np.ndarray) -> np.ndarray:
    """Mean absolute turning angle (rad) at the inner control points of the active strokes."""
    d = np.diff(pts, axis=2)  # (N, S, P-1, 2) segments
    ang = np.arctan2(d[..., 1], d[..., 0])
    turn = np.abs((np.diff(ang, axis=2) + np.pi) % (2 * np.pi) - np.pi)  # (N, S, P-2)
    # the turn at inner point j+1 exists when point j+2 does
    valid = active[..., None] & (np.arange(turn.shape[2]) + 2 < n_pts[..., None])
    return (turn * valid).sum(axis=(1, 2)) / np.maximum(valid.sum(axis=(1, 2)), 1)


def glyph_attributes(class_ids) -> list[dict[str, str]]:
    """The attributes of each glyph class id (see the module docstring), in order."""
    pts, n_pts, active = class_skeletons(class_ids)
    strokes = active.sum(axis=1)
    points = (n_pts * active).sum(axis=1)
    style = np.digitize(_mean_turn(pts, n_pts, active), _STYLE_CUTS)
    complexity = np.digitize(points, np.array(_COMPLEXITY_CUTS) + 0.5)
    styles, levels = ("flowing", "curved", "angular"), ("simple", "medium", "complex")
    return [{"strokes": str(s), "style": styles[t], "complexity": levels[c]}
            for s, t, c in zip(strokes.tolist(), style.tolist(), complexity.tolist(), strict=True)]


def glyph_class_meta(label: str) -> dict[str, str]:
    """Attributes of a ``glyph-<id>`` label; ``{}`` for any other label."""
    m = _GLYPH_LABEL.fullmatch(str(label))
    if m is None or int(m.group(1)) >= 2**31:
        return {}
    return glyph_attributes([int(m.group(1))])[0]
