"""megaclass: recognition among millions of classes that keep growing after training.

Train an embedding model whose head scales, enroll new classes from a few
samples into a gallery without retraining, and identify among them with an
ANN index, rejecting unknowns at a calibrated threshold.

>>> from megaclass import GlyphSource, Recognizer, train_encoder   # doctest: +SKIP

Names are imported lazily, so ``import megaclass.gallery`` works without torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

__version__ = "0.1.0"

_EXPORTS = {
    "Recognizer": "megaclass.recognizer",
    "Decision": "megaclass.recognizer",
    "Verdict": "megaclass.recognizer",
    "Gallery": "megaclass.gallery",
    "GalleryProtocol": "megaclass.gallery",
    "Match": "megaclass.gallery",
    "GlyphSource": "megaclass.data.glyphs",
    "ImageFolderSource": "megaclass.data.folder",
    "ArraySource": "megaclass.data.arrays",
    "Encoder": "megaclass.models",
    "EncoderConfig": "megaclass.models",
    "load_encoder": "megaclass.models",
    "make_head": "megaclass.heads",
    "Trainer": "megaclass.train",
    "TrainConfig": "megaclass.train",
    "train_encoder": "megaclass.train",
    "top_k_accuracy": "megaclass.evaluate",
    "calibrate_threshold": "megaclass.evaluate",
    "fnir_at_fpir": "megaclass.evaluate",
}

__all__ = sorted(_EXPORTS) + ["__version__"]

if TYPE_CHECKING:  # pragma: no cover
    from .data.arrays import ArraySource
    from .data.folder import ImageFolderSource
    from .data.glyphs import GlyphSource
    from .evaluate import calibrate_threshold, fnir_at_fpir, top_k_accuracy
    from .gallery import Gallery, GalleryProtocol, Match
    from .heads import make_head
    from .models import Encoder, EncoderConfig, load_encoder
    from .recognizer import Decision, Recognizer, Verdict
    from .train import TrainConfig, Trainer, train_encoder


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'megaclass' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
