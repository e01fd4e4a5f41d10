"""Training heads (objectives over class ids) behind one :class:`Head` interface.

``softmax``, ``normface``/``cosface``/``arcface`` (dense), ``partial_fc`` (sampled centres,
row-sparse updates), ``adaptive`` (Grave et al.), ``hierarchical`` (two-level softmax),
``triplet`` (metric learning with mining); all built by :func:`make_head` and loaded by
:func:`load_head`. Parts given to heads: a :class:`Margin` (:mod:`.margins`) to the margin
heads and Partial FC, a :class:`LossReduction` (focal loss, class weights) to the softmax ones.
"""

from .adaptive import AdaptiveHead
from .base import Head, InsufficientMemoryError, TaxonomyError
from .hierarchical import HierarchicalHead
from .margins import MARGINS, ArcFaceMargin, CosFaceMargin, Margin, NoMargin, make_margin
from .partial_fc import PartialFCHead
from .reduction import LossReduction
from .registry import HEADS, load_head, make_head
from .softmax import ArcFaceHead, CosFaceHead, MarginSoftmaxHead, SoftmaxHead
from .triplet import TripletHead

__all__ = ["Head", "HEADS", "make_head", "load_head", "SoftmaxHead", "MarginSoftmaxHead",
           "CosFaceHead", "ArcFaceHead", "PartialFCHead", "AdaptiveHead", "HierarchicalHead",
           "TripletHead", "TaxonomyError", "InsufficientMemoryError", "Margin", "MARGINS", "NoMargin",
           "CosFaceMargin", "ArcFaceMargin", "make_margin", "LossReduction"]
