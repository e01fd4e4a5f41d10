"""Sources of labelled samples, samplers and image conversion.

- :class:`GlyphSource`: built-in procedural glyphs, unlimited classes, no storage.
- :class:`ImageFolderSource`: ``root/<class>/<image>`` (nested allowed).
- :class:`ArraySource`: images and labels already in memory.
- :class:`MPerClassSampler`, :class:`ClassBalancedSampler`: batch samplers.
"""

from .arrays import ArraySource
from .base import Source
from .folder import ImageFolderSource
from .glyphs import GlyphSource, render_glyphs
from .images import load_image, to_batch, to_input
from .samplers import ClassBalancedSampler, MPerClassSampler, class_weights
from .spec import open_source, parse_glyph_range

__all__ = ["Source", "GlyphSource", "render_glyphs", "ImageFolderSource", "ArraySource",
           "load_image", "to_batch", "to_input", "MPerClassSampler", "ClassBalancedSampler",
           "class_weights", "open_source", "parse_glyph_range"]
