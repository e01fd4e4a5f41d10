"""Training heads (objectives over class ids) behind one :class:`Head` interface."""

from .base import Head, load_head
from .registry import HEADS, make_head
from .softmax import ArcFaceHead, CosFaceHead, MarginSoftmaxHead, SoftmaxHead

__all__ = ["Head", "HEADS", "make_head", "load_head", "SoftmaxHead", "MarginSoftmaxHead",
           "CosFaceHead", "ArcFaceHead"]
