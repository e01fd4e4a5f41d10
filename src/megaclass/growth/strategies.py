"""Update strategies: turn a round of new classes into a new :class:`GrowthState`.

================  ==========================================================  =====================
strategy          what changes                                                gallery afterwards
================  ==========================================================  =====================
``enroll``        nothing learned: new templates (normalised mean embeddings)  new classes added
``imprint``       new head rows imprinted (Qi et al. 2018), then only the new  new classes added
                  rows fine-tuned (encoder and old rows fixed)                 (their rows)
``finetune``      imprint, then encoder + all rows fine-tuned on the new       re-made with the new
                  classes + a replay of old exemplars and stored centres +     encoder from the
                  distillation of old-class logits (LwF, Li & Hoiem 2016)      retained samples
``retrain``       encoder + head trained from scratch on every class so far    re-made likewise
================  ==========================================================  =====================

A class already present is refused (:class:`~megaclass.errors.ConfigError`) unless the
update is called with ``replace=True``, which replaces its samples (and template).

Example
-------
>>> import tempfile, numpy as np
>>> from megaclass.data.glyphs import GlyphSource
>>> from megaclass.growth import GrowthState, Recipe, make_strategy
>>> images, ids = GlyphSource.batch(np.arange(6), 4)
>>> state = GrowthState.train({f"g{i}": images[ids == i] for i in range(4)}, tempfile.mkdtemp(),
...                           Recipe(steps=2, batch_size=16, dim=16, widths=(8, 16)))
>>> state = make_strategy("imprint", steps=3).update(state, {f"g{i}": images[ids == i] for i in (4, 5)})
>>> len(state.gallery), state.head.num_classes
(6, 6)
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping
from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import ConfigError
from .state import GrowthState, check_new_classes, cosine_lr, embed, grow_head, imprint


class UpdateStrategy:
    """Base class: ``update(state, new_classes, replace=False) -> state``.

    ``new_classes`` maps label -> samples (or is an iterable of ``(label, samples)``).
    Subclasses implement :meth:`_update` on validated, ready tensors. ``update`` returns
    the new state; the state passed in must not be used afterwards (its gallery may have
    been written to or replaced).
    """

    name: ClassVar[str] = "strategy"
    #: True when the update changes the encoder (the gallery must then be re-embedded)
    changes_encoder: ClassVar[bool] = False

    def update(self, state: GrowthState, new_classes: Mapping[str, object] | Iterable[tuple[str, object]], *,
               replace: bool = False) -> GrowthState:
        labels, ready = check_new_classes(new_classes, state.labels, replace=replace,
                                          spec=state.encoder.input_spec)
        replaced = [lb for lb in labels if lb in state.samples]
        fresh = [lb for lb in labels if lb not in state.samples]
        state.samples.update(ready)
        if replaced:  # the replaced classes' rows and templates follow their new samples
            rows = {lb: i for i, lb in enumerate(state.labels)}
            with torch.no_grad():
                for lb in replaced:
                    state.head.weight[rows[lb]] = imprint(state.encoder, ready[lb])
            if not self.changes_encoder:
                state.enroll_templates(replaced, state.templates(replaced), replace=True)
        return self._update(state, fresh, replaced)

    def _update(self, state: GrowthState, fresh: list[str], replaced: list[str]) -> GrowthState:
        raise NotImplementedError

    def describe(self) -> dict:
        return {"name": self.name, **{k: v for k, v in vars(self).items() if not k.startswith("_")}}


class Enroll(UpdateStrategy):
    """Frozen encoder; each new class enrolled as its normalised mean embedding (today's path).

    The head grows by the same rows (imprinting without training), so a later strategy
    still has one stored centre per class. Encoder, old rows and old templates stay
    bit-identical (``tests/test_growth.py`` checks it).
    """

    name = "enroll"

    def _update(self, state, fresh, replaced):
        if fresh:
            vectors = state.templates(fresh)
            state.head = grow_head(state.head, torch.from_numpy(vectors))
            state.labels = state.labels + fresh
            state.enroll_templates(fresh, vectors)
        return state


class Imprint(UpdateStrategy):
    """Imprint new rows, then fine-tune only the new rows; encoder and old rows fixed.

    Each step is the head's margin loss over every row on the new samples' embeddings and
    on the old classes' exemplars (so the new rows also learn to stay away from old
    classes' samples); old rows get no update. Embeddings are computed once (the encoder
    is frozen), so a step costs ``O(n * C * D)`` with no forward pass of the encoder.

    Parameters
    ----------
    steps : full-batch steps of AdamW on the new rows (0: imprint only, like ``enroll``).
    lr : peak learning rate (cosine decay).
    """

    name = "imprint"

    def __init__(self, steps: int = 50, lr: float = 0.01) -> None:
        if steps < 0:
            raise ConfigError(f"imprint steps must be >= 0, got {steps}")
        self.steps, self.lr = int(steps), float(lr)

    def _update(self, state, fresh, replaced):
        if not fresh:
            return state
        start = state.head.num_classes
        head = grow_head(state.head, torch.stack([imprint(state.encoder, state.samples[lb]) for lb in fresh]))
        state.labels = state.labels + fresh
        row = {lb: i for i, lb in enumerate(state.labels)}
        x = torch.cat([state.samples[lb] for lb in fresh])
        y = torch.cat([torch.full((len(state.samples[lb]),), row[lb]) for lb in fresh])
        ox, oy = state.exemplar_batch(state.labels[:start])
        emb = embed(state.encoder, torch.cat([x, ox]) if len(ox) else x)
        y = torch.cat([y, oy]) if len(oy) else y
        old_rows = head.weight.detach()[:start]
        new_rows = torch.nn.Parameter(head.weight.detach()[start:].clone())
        opt = torch.optim.AdamW([new_rows], lr=self.lr, weight_decay=0.0)
        for step in range(self.steps):
            for g in opt.param_groups:
                g["lr"] = cosine_lr(step, self.steps, self.lr)
            w = F.normalize(torch.cat([old_rows, new_rows]), dim=1)
            logits = head.margin_logits(emb @ w.t(), y)
            loss = head.reduction(logits, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        with torch.no_grad():
            head.weight[start:] = new_rows.detach()
        state.head = head
        state.enroll_templates(fresh, head.class_centers()[start:].numpy())
        return state


class Finetune(UpdateStrategy):
    """Imprint, then fine-tune the encoder and every row with replay and distillation.

    Each step's batch holds ``new_per_step`` samples of the new (and replaced) classes and
    ``replay_per_step`` exemplars of old classes (the state's exemplar buffer). The loss is

    ``margin CE(all rows) + distill * T^2 KL(old model's old-class logits || new ones)
    + centres * margin CE(stored old centres as embeddings)``

    -- the distillation term is Learning without Forgetting (Li & Hoiem 2016) on the
    old-class logits of the same batch, the teacher being the model before the update; the
    centre replay keeps the old rows separable from the new ones. Afterwards the gallery is
    re-made with the new encoder from the retained samples (:meth:`GrowthState.reembed`).

    Parameters
    ----------
    steps, lr : AdamW steps and peak learning rate (cosine decay).
    encoder_lr_scale : the encoder's learning rate relative to the rows (the pretrained
        tensors' ``pretrained_lr_scale`` of :mod:`megaclass.models.finetune`).
    freeze : encoder stages kept fixed (``stem``, ``stage1``, ...; see
        :class:`~megaclass.models.finetune.StageFreezer`).
    new_per_step, replay_per_step : batch composition (``replay_per_step=0`` and
        ``distill=centres=0`` is plain fine-tuning on the new classes).
    distill, temperature : weight and temperature of the LwF term.
    centres : weight of the stored-centre replay term.
    """

    name = "finetune"
    changes_encoder = True

    def __init__(self, steps: int = 40, lr: float = 3e-3, encoder_lr_scale: float = 0.3,
                 freeze: tuple[str, ...] = (), new_per_step: int = 64, replay_per_step: int = 64,
                 distill: float = 1.0, temperature: float = 2.0, centres: float = 0.5, seed: int = 0) -> None:
        if steps < 1 or new_per_step < 1 or replay_per_step < 0:
            raise ConfigError("finetune needs steps >= 1, new_per_step >= 1 and replay_per_step >= 0")
        if min(distill, centres) < 0 or temperature <= 0 or encoder_lr_scale <= 0:
            raise ConfigError("finetune needs distill, centres >= 0 and temperature, encoder_lr_scale > 0")
        self.steps, self.lr, self.encoder_lr_scale = int(steps), float(lr), float(encoder_lr_scale)
        self.freeze = tuple(freeze)
        self.new_per_step, self.replay_per_step = int(new_per_step), int(replay_per_step)
        self.distill, self.temperature, self.centres = float(distill), float(temperature), float(centres)
        self.seed = int(seed)

    def _update(self, state, fresh, replaced):
        from ..models.finetune import StageFreezer

        start = state.head.num_classes
        old_labels = [lb for lb in state.labels if lb not in replaced]
        teacher = copy.deepcopy(state.encoder).eval()
        teacher_rows = state.head.class_centers()  # stored centres, before the update
        if fresh:
            state.head = grow_head(state.head, torch.stack([imprint(state.encoder, state.samples[lb])
                                                            for lb in fresh]))
            state.labels = state.labels + fresh
        head, encoder = state.head.train(), state.encoder
        row = {lb: i for i, lb in enumerate(state.labels)}
        learn = fresh + replaced
        nx = torch.cat([state.samples[lb] for lb in learn])
        ny = torch.cat([torch.full((len(state.samples[lb]),), row[lb]) for lb in learn])
        ox, oy = state.exemplar_batch(old_labels)
        old_rows = torch.tensor([row[lb] for lb in old_labels], dtype=torch.int64)
        gen = torch.Generator().manual_seed(self.seed + start)
        freezer = StageFreezer(encoder.config, self.freeze)
        opt = torch.optim.AdamW([{"params": list(encoder.parameters()), "lr_scale": self.encoder_lr_scale},
                                 {"params": list(head.parameters()), "lr_scale": 1.0}], lr=self.lr)
        encoder.train()
        for step in range(self.steps):
            lr = cosine_lr(step, self.steps, self.lr)
            for g in opt.param_groups:
                g["lr"] = lr * g["lr_scale"]
            freezer.update(encoder, step)
            i = torch.randint(len(nx), (self.new_per_step,), generator=gen)
            x, y = nx[i], ny[i]
            if self.replay_per_step and len(ox):
                j = torch.randint(len(ox), (self.replay_per_step,), generator=gen)
                x, y = torch.cat([x, ox[j]]), torch.cat([y, oy[j]])
            emb = encoder(x)
            loss = head(emb, y)
            if self.distill and len(old_rows):
                loss = loss + self.distill * self._distillation(teacher, teacher_rows, old_rows, head, x, emb)
            if self.centres and len(old_rows):
                k = torch.randint(len(old_rows), (min(len(old_rows), 256),), generator=gen)
                loss = loss + self.centres * head(teacher_rows[old_rows[k]], old_rows[k])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        freezer.release(encoder)
        encoder.eval()
        head.eval()
        state.reembed()  # the durable re-embed: beside the old templates, one switch
        return state

    def _distillation(self, teacher, teacher_rows, old_rows, head, x, emb) -> torch.Tensor:
        """LwF: KL between the teacher's and the student's softmax over the old classes."""
        t = self.temperature
        with torch.no_grad():
            target = F.softmax(head.scale * (teacher(x) @ teacher_rows[old_rows].t()) / t, dim=1)
        student = head.scale * head.cosine(emb)[:, old_rows] / t
        return F.kl_div(F.log_softmax(student, dim=1), target, reduction="batchmean") * t * t


class Retrain(UpdateStrategy):
    """Train encoder + head from scratch on every class so far (the state's recipe), then
    re-make the gallery: the expensive reference. Its cost grows with the retained data.

    ``budget`` multiplies the recipe's steps (1: the same epochs as the base model)."""

    name = "retrain"
    changes_encoder = True

    def __init__(self, budget: float = 1.0) -> None:
        if not budget > 0:
            raise ConfigError(f"retrain budget must be > 0, got {budget}")
        self.budget = float(budget)

    def _update(self, state, fresh, replaced):
        state.labels = state.labels + fresh
        recipe = copy.deepcopy(state.recipe)
        recipe.steps = max(1, round(recipe.steps * self.budget))
        state.encoder, state.head = recipe.train(state.samples, state.labels)
        state.reembed()  # the durable re-embed: beside the old templates, one switch
        return state


STRATEGIES: dict[str, type[UpdateStrategy]] = {c.name: c for c in (Enroll, Imprint, Finetune, Retrain)}


def make_strategy(name: str, **options) -> UpdateStrategy:
    """Build a strategy by name (``enroll``, ``imprint``, ``finetune``, ``retrain``)."""
    try:
        cls = STRATEGIES[name.lower()]
    except KeyError:
        raise ConfigError(f"unknown strategy {name!r}; choose one of {', '.join(STRATEGIES)}") from None
    try:
        return cls(**options)
    except TypeError as exc:
        raise ConfigError(f"strategy {name!r} does not accept {sorted(options)}: {exc}") from None


def identification(state: GrowthState, queries: torch.Tensor, truth: list[str], non_mated: torch.Tensor,
                   *, fpir: float = 0.01, groups: Mapping[str, np.ndarray] | None = None) -> dict:
    """Top-1 and FNIR at ``fpir`` of the state's gallery for mated queries (and subsets).

    ``groups`` maps a name (e.g. ``"old"``, ``"new"``) to a boolean mask over the queries;
    ``"all"`` is always reported. The threshold comes from the non-mated searches of the
    same gallery, so every group is measured at the same operating point.
    """
    from ..evaluate.open_set import fnir_at_fpirs

    q = embed(state.encoder, queries).numpy()
    nm = embed(state.encoder, non_mated).numpy()
    gallery = state.live_gallery()
    found = gallery.search(q, k=1)
    pred = np.array([m[0].label if m else "" for m in found], dtype=object)
    scores = np.array([m[0].score if m else -np.inf for m in found])
    nm_scores = np.array([m[0].score if m else -np.inf for m in gallery.search(nm, k=1)])
    correct = pred == np.asarray(truth, dtype=object)
    out: dict[str, dict[str, float | None]] = {}
    for name, mask in {"all": np.ones(len(truth), bool), **(groups or {})}.items():
        mask = np.asarray(mask, bool)
        if not mask.any():
            out[name] = {"top1": None, "fnir": None, "queries": 0}
            continue
        r = fnir_at_fpirs(scores[mask], correct[mask], nm_scores, (fpir,))[0]
        out[name] = {"top1": float(correct[mask].mean()), "fnir": r["fnir"], "queries": int(mask.sum())}
    return out
