"""Encoders: images -> L2-normalised embeddings; save/load as safetensors + JSON."""

from .encoder import Encoder, EncoderConfig, load_encoder

__all__ = ["Encoder", "EncoderConfig", "load_encoder"]
