"""Class centres of a trained head as gallery templates, and top-k prediction over them.

"Softmax over a million classes" at inference is a top-k inner-product search over the
head's normalised rows; putting them in a :class:`~megaclass.gallery.Gallery` makes that
an indexed FAISS search, and new classes can then be enrolled beside them.

Example
-------
>>> import tempfile, torch
>>> from megaclass.heads import CosFaceHead
>>> head = CosFaceHead(5, 8)
>>> g = export_to_gallery(head, tempfile.mkdtemp(), labels=list("abcde"))
>>> g.search(head.class_centers()[2:3].numpy(), k=1)[0][0].label
'c'
"""

from __future__ import annotations

import os

from ..errors import ConfigError
from .base import Head


def head_labels(head: Head, labels=None) -> list[str]:
    """The class labels of a head: ``labels`` if given, else ``class-<id>``."""
    if labels is None:
        return [f"class-{i}" for i in range(head.num_classes)]
    labels = [str(x) for x in labels]
    if len(labels) != head.num_classes:
        raise ConfigError(f"{len(labels)} labels for a head of {head.num_classes} classes")
    return labels


def export_to_gallery(head: Head, gallery, *, labels=None, replace: bool = False, chunk: int = 100_000):
    """Enroll each class centre of ``head`` as a one-template class of ``gallery`` (a path or Gallery).

    Returns the open :class:`Gallery`. Classes are enrolled in chunks of ``chunk`` (one
    transaction each), so memory stays bounded at millions of classes.
    """
    from ..gallery import Gallery

    centres = head.class_centers()
    if centres is None:
        raise ConfigError(f"the {head.name} head has no class centres to export")
    names = head_labels(head, labels)
    g = gallery if isinstance(gallery, Gallery) else Gallery.open(os.fspath(gallery), dim=head.dim)
    arr = centres.numpy()
    for lo in range(0, len(names), chunk):
        g.enroll_many(((names[i], arr[i: i + 1]) for i in range(lo, min(lo + chunk, len(names)))),
                      replace=replace)
    return g
