"""Training heads (objectives over class ids) behind one :class:`Head` interface.

``softmax``, ``normface``/``cosface``/``arcface`` (dense), ``partial_fc`` (sampled centres,
row-sparse updates), ``adaptive`` (Grave et al.), ``hierarchical`` (two-level softmax),
``triplet`` (metric learning with mining); all built by :func:`make_head`.
"""

from .adaptive import AdaptiveHead
from .base import Head, InsufficientMemoryError, TaxonomyError, load_head
from .hierarchical import HierarchicalHead
from .partial_fc import PartialFCHead
from .registry import HEADS, make_head
from .softmax import ArcFaceHead, CosFaceHead, MarginSoftmaxHead, SoftmaxHead
from .triplet import TripletHead

__all__ = ["Head", "HEADS", "make_head", "load_head", "SoftmaxHead", "MarginSoftmaxHead",
           "CosFaceHead", "ArcFaceHead", "PartialFCHead", "AdaptiveHead", "HierarchicalHead",
           "TripletHead", "TaxonomyError", "InsufficientMemoryError"]
