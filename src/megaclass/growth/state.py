"""What a growing recognition system carries from one update round to the next.

A :class:`GrowthState` holds the encoder, a cosine head with one row per class (the stored
class centres), the retained samples of every class (the exemplar buffer is their first
``exemplars`` per class) and a gallery whose templates were made by the state's encoder.
:class:`Recipe` is the from-scratch training recipe, used for the base model and by the
``retrain`` strategy so that both train the same way.

Example
-------
>>> import tempfile, numpy as np
>>> from megaclass.data.glyphs import GlyphSource
>>> images, ids = GlyphSource.batch(np.arange(4), 4)
>>> samples = {f"g{i}": images[ids == i] for i in range(4)}
>>> state = GrowthState.train(samples, tempfile.mkdtemp(), Recipe(steps=2, batch_size=16, dim=16,
...                           widths=(8, 16)))
>>> state.labels, len(state.gallery), state.head.num_classes
(['g0', 'g1', 'g2', 'g3'], 4, 4)
"""

from __future__ import annotations

import copy
import math
import shutil
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import ConfigError, InvalidInputError, MegaclassError
from ..heads import MarginSoftmaxHead, make_head
from ..models import Encoder

if TYPE_CHECKING:
    from ..gallery import Gallery

#: the gallery setting the Recognizer reads to check which model made the templates
MODEL_SETTING = "model_fingerprint"


@dataclass
class Recipe:
    """From-scratch training of the encoder + cosine head on retained samples.

    ``steps`` is the number of optimiser steps for ``reference_images`` training images;
    a run on more images gets proportionally more steps (same number of epochs), so a
    ``retrain`` on a grown set costs what it should. ``head`` must be a dense cosine head
    (``cosface``, ``arcface``, ``normface``): its rows are the stored class centres.
    """

    head: str = "cosface"
    steps: int = 200
    reference_images: int | None = None  # None: the first training set's size
    batch_size: int = 128
    m_per_class: int = 4
    dim: int = 64
    widths: tuple[int, ...] = (16, 32, 64)
    lr: float | None = None
    augment: str | None = None
    seed: int = 0
    extra: dict = field(default_factory=dict)  # further TrainConfig options

    def steps_for(self, images: int) -> int:
        ref = self.reference_images or images
        return max(1, round(self.steps * images / ref))

    def train(self, samples: Mapping[str, torch.Tensor],
              labels: list[str]) -> tuple[Encoder, MarginSoftmaxHead]:
        """Train from scratch on ``samples`` (rows of the head in ``labels`` order)."""
        from ..data.arrays import ArraySource
        from ..train import Trainer

        images = torch.cat([samples[lb] for lb in labels])
        y = np.repeat(np.arange(len(labels)), [len(samples[lb]) for lb in labels])
        source = ArraySource(images, y, class_names=labels, spec=_spec_of(images))
        if self.reference_images is None:
            self.reference_images = len(images)
        trainer = Trainer(source, head=self.head, steps=self.steps_for(len(images)),
                          batch_size=self.batch_size, m_per_class=self.m_per_class, dim=self.dim,
                          widths=tuple(self.widths), lr=self.lr, augment=self.augment, seed=self.seed,
                          progress=False, num_workers=0, **self.extra)
        encoder = trainer.fit().encoder_
        head = trainer.head_
        if not isinstance(head, MarginSoftmaxHead):
            raise ConfigError(f"growth needs a dense cosine head (cosface, arcface, normface), "
                              f"got {self.head!r}")
        return encoder, head


def _spec_of(images: torch.Tensor):
    from ..data.input_spec import InputSpec

    return InputSpec(channels=images.shape[1], size=images.shape[-1], resize="pad",
                     polarity="auto" if images.shape[1] == 1 else "none")


def embed(encoder: Encoder, images: torch.Tensor) -> torch.Tensor:
    """Unit embeddings of ready image tensors, in eval mode (no_grad, not inference_mode: the
    result feeds autograd in :class:`~megaclass.growth.strategies.Imprint`)."""
    with torch.no_grad():
        return encoder.embed(images)


def imprint(encoder: Encoder, samples: torch.Tensor) -> torch.Tensor:
    """The imprinted weight row of a class (Qi et al. 2018): its normalised mean embedding."""
    return F.normalize(embed(encoder, samples).mean(0), dim=0)


def grow_head(head: MarginSoftmaxHead, rows: torch.Tensor) -> MarginSoftmaxHead:
    """A copy of ``head`` with ``rows`` (n, D) appended as new classes (old rows unchanged)."""
    old = head.weight.detach()
    new = make_head(head.name, head.num_classes + len(rows), head.dim, **head.hparams())
    if not isinstance(new, MarginSoftmaxHead):  # the registry builds the same class from its name
        raise ConfigError(f"head {head.name!r} did not rebuild as a cosine head")
    with torch.no_grad():
        new.weight.copy_(torch.cat([old, rows.to(old.dtype)]))
    return new.eval()


@dataclass
class GrowthState:
    """Encoder + cosine head + retained samples + gallery: the input and output of an update.

    Attributes
    ----------
    encoder : the current encoder (its fingerprint is recorded in the gallery).
    head : cosine head, one row per class in ``labels`` order (the stored class centres).
    labels : class labels, in head-row order.
    samples : label -> retained sample tensor ``(n, C, H, W)`` (what a re-embed and a
        retrain read; the original enrolment samples).
    gallery_dir : folder holding this state's galleries (``gallery-<k>``).
    gallery : the :class:`~megaclass.gallery.Gallery`; one template per class.
    recipe : the from-scratch training recipe (base model, ``retrain``).
    exemplars : old-class samples per class kept for replay (the first ``exemplars``).
    generation : how many galleries this state has built (names the next one).
    """

    encoder: Encoder
    head: MarginSoftmaxHead
    labels: list[str]
    samples: dict[str, torch.Tensor]
    gallery_dir: Path
    gallery: Gallery | None  # made by the first reembed(), which the constructors call
    recipe: Recipe
    exemplars: int = 2
    generation: int = 0

    # -- construction ------------------------------------------------------------------
    @classmethod
    def train(cls, samples: Mapping[str, object], gallery_dir, recipe: Recipe | None = None, *,
              exemplars: int = 2) -> GrowthState:
        """Train the base model on ``samples`` (label -> images) and enroll every class."""
        recipe = recipe or Recipe()
        labels, ready = check_new_classes(samples, known=())
        encoder, head = recipe.train(ready, labels)
        state = cls(encoder=encoder, head=head, labels=labels, samples=ready,
                    gallery_dir=Path(gallery_dir), gallery=None, recipe=recipe, exemplars=exemplars)
        state.reembed()
        return state

    @classmethod
    def start(cls, encoder: Encoder, head: MarginSoftmaxHead, labels: list[str],
              samples: Mapping[str, torch.Tensor], gallery_dir, recipe: Recipe, *,
              exemplars: int = 2) -> GrowthState:
        """A state from an existing model (deep copies of encoder and head) with a fresh gallery."""
        if head.num_classes != len(labels):
            raise ConfigError(f"{len(labels)} labels for a head of {head.num_classes} rows")
        state = cls(encoder=copy.deepcopy(encoder).eval(), head=copy.deepcopy(head).eval(),
                    labels=list(labels), samples=dict(samples), gallery_dir=Path(gallery_dir),
                    gallery=None, recipe=copy.deepcopy(recipe), exemplars=exemplars)
        state.reembed()
        return state

    def fork(self, gallery_dir) -> GrowthState:
        """An independent copy (model, samples, recipe) with its own gallery in ``gallery_dir``."""
        return GrowthState.start(self.encoder, self.head, self.labels, self.samples, gallery_dir,
                                 self.recipe, exemplars=self.exemplars)

    # -- the gallery ---------------------------------------------------------------------
    def live_gallery(self) -> Gallery:
        """:attr:`gallery`, which every constructed state has (its first :meth:`reembed` made it)."""
        if self.gallery is None:
            raise MegaclassError("this growth state has no gallery yet: reembed() makes it")
        return self.gallery

    def templates(self, labels: Iterable[str]) -> np.ndarray:
        """One template per class: the normalised mean embedding of its retained samples."""
        return torch.stack([imprint(self.encoder, self.samples[lb]) for lb in labels]).numpy()

    def reembed(self) -> None:
        """Re-make every template with the current encoder and switch (the durable
        :func:`megaclass.gallery.reembed.reembed`, reading the retained samples), then
        enroll the classes the gallery does not hold yet. The first call creates the gallery."""
        from ..gallery import Gallery

        if self.gallery is None:
            self.gallery_dir.mkdir(parents=True, exist_ok=True)
            path = self.gallery_dir / f"gallery-{self.generation}"
            if path.exists():
                shutil.rmtree(path)
            self.gallery = Gallery.open(path, dim=self.encoder.dim, index="Flat")
            self.generation += 1
        else:
            self.gallery.reembed(self.encoder, _RetainedTensors(self.samples))
        self.gallery.set_setting(MODEL_SETTING, self.encoder.fingerprint())  # before: templates record it
        fresh = [lb for lb in self.labels if lb not in self.gallery]
        if fresh:
            self.enroll_templates(fresh, self.templates(fresh))

    def enroll_templates(self, labels: list[str], vectors: np.ndarray, *, replace: bool = False) -> None:
        """Add (or with ``replace`` swap) one template per class in one transaction."""
        self.live_gallery().enroll_many([(lb, vectors[i: i + 1]) for i, lb in enumerate(labels)],
                                        replace=replace)

    # -- replay --------------------------------------------------------------------------
    def exemplar_batch(self, labels: Iterable[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """The exemplar buffer of ``labels``: images and head-row indices."""
        row = {lb: i for i, lb in enumerate(self.labels)}
        xs, ys = [], []
        for lb in labels:
            x = self.samples[lb][: self.exemplars]
            xs.append(x)
            ys.append(torch.full((len(x),), row[lb], dtype=torch.int64))
        if not xs:
            return torch.empty(0), torch.empty(0, dtype=torch.int64)
        return torch.cat(xs), torch.cat(ys)

    def exemplar_bytes(self) -> int:
        return sum(min(len(s), self.exemplars) * s[0].numel() * s.element_size()
                   for s in self.samples.values())

    def close(self) -> None:
        if self.gallery is not None:
            self.gallery.close()


class _RetainedTensors:
    """The state's retained samples as a re-embed source (ready tensors, label -> batch)."""

    def __init__(self, samples: Mapping[str, torch.Tensor]) -> None:
        self._samples = samples

    def describe(self) -> str:
        return "the growth state's retained samples"

    def labels(self) -> set[str]:
        return set(self._samples)

    def batches(self, labels: list[str]) -> list[torch.Tensor]:
        return [self._samples[lb] for lb in labels]


def check_new_classes(classes: Mapping[str, object] | Iterable[tuple[str, object]], known: Iterable[str], *,
                      replace: bool = False, spec=None) -> tuple[list[str], dict[str, torch.Tensor]]:
    """Validate a round of new classes: ``(labels in order, label -> ready image tensor)``.

    A label already present raises :class:`ConfigError` unless ``replace`` is true; a
    label twice in the round, an empty sample set or a non-string label raises too.
    """
    from ..data.images import to_batch

    items = list(classes.items()) if isinstance(classes, Mapping) else list(classes)
    if not items:
        raise ConfigError("an update needs at least one new class")
    labels = [lb for lb, _ in items]
    bad = [lb for lb in labels if not isinstance(lb, str) or not lb]
    if bad:
        raise ConfigError(f"class labels must be non-empty strings, got {bad[0]!r}")
    if len(set(labels)) != len(labels):
        twice = sorted({lb for lb in labels if labels.count(lb) > 1})
        raise ConfigError(f"classes given twice in one update: {', '.join(twice[:5])}")
    present = sorted(set(labels) & set(known))
    if present and not replace:
        shown = ", ".join(present[:5]) + (f" and {len(present) - 5} more" if len(present) > 5 else "")
        raise ConfigError(f"{len(present)} classes are already present: {shown} "
                          "(pass replace=True to replace their samples)")
    ready = {}
    for lb, x in items:
        batch = to_batch(x, spec=spec) if spec is not None else to_batch(x)
        if len(batch) == 0:
            raise InvalidInputError(f"class {lb!r} has no samples")
        ready[lb] = batch
    return labels, ready


def cosine_lr(step: int, total: int, peak: float) -> float:
    """Cosine decay from ``peak`` to 1 % of it (short fine-tuning runs need no warm-up)."""
    t = step / max(1, total - 1)
    return peak * (0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * min(1.0, t))))
