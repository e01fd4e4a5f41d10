"""Data specs: one short string names a source (for the CLI and configs).

Grammar
-------
``glyphs:N``             glyph classes 0 .. N-1
``glyphs:START-END``     glyph classes START .. END-1
``<directory>``          an image folder (``root/<class>/<image>``, nested allowed)

Example
-------
>>> parse_glyph_range("glyphs:100-105")
range(100, 105)
"""

from __future__ import annotations

from pathlib import Path

from ..errors import ConfigError, InvalidInputError
from .base import Source
from .input_spec import InputSpec

GLYPH_PREFIX = "glyphs:"


def parse_glyph_range(spec: str) -> range | None:
    """The class-id range of a ``glyphs:`` spec, or None if ``spec`` is not one."""
    if not spec.startswith(GLYPH_PREFIX):
        return None
    body = spec[len(GLYPH_PREFIX):]
    try:
        if "-" in body:
            start_s, end_s = body.split("-", 1)
            start, end = int(start_s.replace("_", "")), int(end_s.replace("_", ""))
        else:
            start, end = 0, int(body.replace("_", ""))
    except ValueError:
        raise ConfigError(f"bad glyph spec {spec!r}: use glyphs:N or glyphs:START-END") from None
    if start < 0 or end <= start:
        raise ConfigError(f"bad glyph spec {spec!r}: need 0 <= START < END")
    return range(start, end)


def open_source(spec: str, *, size: int | None = None, samples_per_class: int = 32, seed: int = 0,
                input_spec: InputSpec | None = None, skip_bad_files: bool = False) -> Source:
    """Open the source a spec names (see the module docstring for the grammar).

    ``input_spec`` is the model input contract (channels, size, resize, polarity);
    glyphs always use the handwriting geometry and repeat their drawing on 3 channels
    for a colour contract. ``skip_bad_files`` (folders): corrupt images are warned about
    and left out instead of raising :class:`~megaclass.errors.CorruptImageError`.
    """
    from .images import as_spec

    input_spec = as_spec(size, input_spec)
    ids = parse_glyph_range(spec)
    if ids is not None:
        from .glyphs import GlyphSource

        return GlyphSource(ids, samples_per_class=samples_per_class, size=input_spec.size, seed=seed,
                           channels=input_spec.channels)
    path = Path(spec)
    if not path.exists():
        raise InvalidInputError(
            f"data {spec!r} is neither a glyph spec (glyphs:START-END) nor an existing folder"
        )
    from .folder import ImageFolderSource

    return ImageFolderSource(path, spec=input_spec, skip_bad_files=skip_bad_files)
