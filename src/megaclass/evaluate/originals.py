"""The original images behind queries and classes, for the report's thumbnails.

The model sees a 32-px (or so) input; a reader of the report wants to see the sample
itself. A query or class sample is named by its *source*: an image file (shown as the
file, downscaled for the page) or a :class:`Glyph` (a drawing of the built-in glyph
source, rendered again at the thumbnail size from its class id, drawing index and seed:
the same drawing, not an upscaled model input).

Example
-------
>>> png, (w, h) = thumbnail(Glyph(7, 0, seed=1), side=96)
>>> (w, h), png[:4] == b"\\x89PNG"
((96, 96), True)
>>> str(Glyph(7, 2, seed=1))
'glyph 7 #2'
"""

from __future__ import annotations

import io
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

#: longest side of a thumbnail in the report, in pixels
THUMB_SIDE = 96

_GLYPH_LABEL = re.compile(r"glyph-(\d+)")
#: ``enroll --from glyphs:...`` draws its samples with this seed (its ``--seed`` default)
ENROLL_GLYPH_SEED = 1


@dataclass(frozen=True)
class Glyph:
    """One drawing of the built-in glyph source: ``(class_id, index, seed)`` fixes it."""

    class_id: int
    index: int = 0
    seed: int = 0

    def __str__(self) -> str:
        return f"glyph {self.class_id} #{self.index}"


Source = Glyph | str | Path


def name_of(src: Source) -> str:
    """How the report names a sample: the file path as given, or ``glyph ID #INDEX``."""
    return str(src)


def thumbnail(src: Source, side: int = THUMB_SIDE) -> tuple[bytes, tuple[int, int]]:
    """PNG bytes of a sample scaled so its longer side is ``side`` (files are never enlarged),
    and the thumbnail's ``(width, height)``. A file keeps its colours and aspect ratio."""
    from PIL import Image, ImageOps

    if isinstance(src, Glyph):
        from ..data.glyphs import render_glyphs

        a = render_glyphs([src.class_id], [src.index], size=side, seed=src.seed)[0]
        im = Image.fromarray((np.clip(a, 0, 1) * 255).astype(np.uint8), mode="L")
    else:
        with Image.open(src) as f:
            f.draft("RGB", (side, side))  # JPEG: decode at a reduced scale
            im = ImageOps.exif_transpose(f)
            im = im.convert("RGB" if im.mode not in ("L", "1", "I;16", "I") else "L")
            im.thumbnail((side, side))
    buf = io.BytesIO()
    im.save(buf, format="PNG", optimize=True)
    return buf.getvalue(), im.size


def glyph_sources(ids: Sequence[int], per_class: int, seed: int) -> list[Glyph]:
    """The sources of ``GlyphSource.batch(ids, per_class, seed=seed)``, in its order."""
    return [Glyph(int(i), j, seed) for i in ids for j in range(per_class)]


def class_sample_finder(samples: Sequence[Source] | None = None,
                        labels: Sequence[str] | None = None,
                        folder: str | Path | None = None) -> Callable[[str], tuple[Source, str] | None]:
    """``label -> (source, what it is)`` or None: an image of a gallery class.

    Looked up in order: an enrolled sample of the class from ``folder`` (the folder the
    gallery was enrolled from, ``root/<class>/<image>``; listed, not decoded) or from
    ``samples``/``labels`` (sources of enrolled samples); a drawing rendered from the id for
    a ``glyph-<id>`` label. The gallery itself stores no images.
    """
    known: dict[str, Source] = {}
    if samples is not None and labels is not None:
        for s, lb in zip(samples, labels, strict=True):
            known.setdefault(lb, s)
    if folder is not None:
        from ..data.folder import ImageFolderSource

        src = ImageFolderSource(Path(folder), verify=False, cache=False)
        for k, name in enumerate(src.class_names):
            files = src.class_paths(k)
            if files:
                known.setdefault(name, files[0])

    def find(label: str) -> tuple[Source, str] | None:
        if label in known:
            return known[label], "an enrolled sample"
        m = _GLYPH_LABEL.fullmatch(str(label))
        if m:
            return Glyph(int(m.group(1)), 0, ENROLL_GLYPH_SEED), "a drawing rendered from its id"
        return None

    return find
