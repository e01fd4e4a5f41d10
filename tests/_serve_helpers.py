"""Shared helpers of the serve tests (not a test module)."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image


def png(image) -> bytes:
    arr = (np.asarray(image).reshape(image.shape[-2:]) * 255).clip(0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def glyph_pngs(class_id: int, n: int, seed: int = 0) -> list[bytes]:
    from megaclass import GlyphSource

    return [png(x) for x in GlyphSource.samples(class_id, n=n, seed=seed)]


def files(pngs: list[bytes], field: str = "files") -> list:
    return [(field, (f"{i}.png", b, "image/png")) for i, b in enumerate(pngs)]
