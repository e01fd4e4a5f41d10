"""Each head's optimizer and learning rate for head-only training, from the head comparison.

``megaclass bench heads`` (issue 21) swept every head on 10,000 classes of frozen
reference-model features (SGD-momentum lr 0.03/0.1/0.3/1 and Adam 1e-3/3e-3/1e-2, 400 steps
each) and kept the setting with the best validation top-1; the winners are stored with the
benchmark in ``docs/bench/head_comparison.json`` and copied here (a test keeps the two in
step). ``Trainer`` uses them when only the head trains (``freeze="all"``) and the caller
gave no optimizer or learning rate; end-to-end training keeps AdamW 3e-3 for encoder and
head together, the setting the end-to-end comparison measured.

Example
-------
>>> head_only_defaults("cosface")
('sgd', 0.03)
>>> head_only_defaults("arcface")  # not swept: the margin heads' winner
('sgd', 0.03)
"""

from __future__ import annotations

#: head -> (optimizer, learning rate) that won the head-only sweep (docs/bench/head_comparison.json)
HEAD_ONLY: dict[str, tuple[str, float]] = {
    "softmax": ("sgd", 0.3),       # with its default scale 16, also the sweep's winner
    "cosface": ("sgd", 0.03),
    "partial_fc": ("sgd", 0.03),
    "hierarchical": ("sgd", 0.03),  # on the grid's edge: a smaller lr was not tried
    "adaptive": ("sgd", 0.3),
}
#: heads the sweep did not cover, and the swept head whose setting they take
SAME_AS = {"arcface": "cosface", "normface": "softmax", "triplet": "cosface"}


def head_only_defaults(head: str) -> tuple[str, float]:
    """``(optimizer, lr)`` for training ``head`` on a frozen encoder."""
    name = head.lower()
    return HEAD_ONLY.get(SAME_AS.get(name, name), HEAD_ONLY["cosface"])
