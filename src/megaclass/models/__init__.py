"""Encoders: images -> L2-normalised embeddings; save/load as safetensors + JSON; ONNX import/export.

:class:`OnnxEncoder` (an imported ONNX model, run by onnxruntime) is imported lazily,
so ``import megaclass.models`` needs neither onnx nor onnxruntime.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .encoder import Encoder, EncoderConfig, load_encoder

if TYPE_CHECKING:  # pragma: no cover
    from .export import export_encoder
    from .onnx_encoder import OnnxEncoder, OnnxEncoderConfig

__all__ = ["Encoder", "EncoderConfig", "OnnxEncoder", "OnnxEncoderConfig", "export_encoder",
           "load_encoder"]

_LAZY = {"OnnxEncoder": ".onnx_encoder", "OnnxEncoderConfig": ".onnx_encoder", "export_encoder": ".export"}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
