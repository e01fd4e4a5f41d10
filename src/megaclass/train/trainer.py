"""The training loop: m-per-class batches -> encoder -> head -> loss, with a cosine schedule.

Example
-------
>>> from megaclass import GlyphSource, TrainConfig, Trainer
>>> config = TrainConfig(head="cosface", batch_size=32, progress=False)
>>> trainer = Trainer(GlyphSource(classes=50, samples_per_class=8), config, steps=2).fit()
>>> trainer.encoder_.dim, len(trainer.history_), config.steps   # the caller's config is unchanged
(128, 2, None)
"""

from __future__ import annotations

import copy
import logging
import math
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np
import torch

from ..data.base import Source
from ..data.input_spec import InputSpec
from ..data.samplers import MPerClassSampler, class_weights
from ..errors import ConfigError
from ..heads import HEADS, Head, LossReduction, make_head
from ..heads.tuned import head_only_defaults
from ..models import Encoder, EncoderConfig
from ..models.backbones import parse_backbone
from ..models.finetune import (
    InitReport,
    StageFreezer,
    architecture_of,
    init_from,
    load_backbone_weights,
    open_init_model,
    stage_names,
)
from .checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from .device import resolve_device
from .loading import BatchFeed
from .progress import TrainProgress

_log = logging.getLogger(__name__)


@dataclass
class TrainConfig:
    """Everything that defines a training run (saved in checkpoints).

    ``steps`` (total optimiser steps), when set, overrides ``epochs``. ``lr``
    defaults to 3e-3 for AdamW and 0.1 for SGD. Warm-up is linear over
    ``warmup_steps`` (default: 5 % of the run, at most 300), then the learning
    rate follows a cosine down to 1 % of its peak.

    ``head_options`` go to the head's constructor (e.g. ``{"sample_rate": 0.1,
    "dtype": "bfloat16"}`` for ``partial_fc``, ``{"taxonomy": "tax.json"}`` for
    ``hierarchical``). Sparse heads (``partial_fc``) update their own rows with the
    same schedule, using row-wise Adam(W) when ``optimizer="adamw"`` and SGD-momentum
    when ``"sgd"``. ``optimizer=None`` (the default) is AdamW, except when only the head
    trains (``freeze="all"`` for the whole run): then, unless ``lr`` is given too, the head's
    optimizer and learning rate that won the head-only sweep of ``bench heads``
    (:mod:`megaclass.heads.tuned`). ``focal_gamma > 0`` turns the cross-entropy into focal loss and
    ``class_balanced`` weights it by the effective number of samples per class
    (Cui et al. 2019, ``balance_beta``); both need a softmax-type head.

    ``augment`` names a batch augmentation applied before the encoder: a preset
    (``default``, ``handwriting``, ``faces``, ``none``), a JSON pipeline (text, list or
    dict) or a path to a JSON file; see :mod:`megaclass.data.augment`. It is seeded by
    ``seed`` and the step, so a resumed run augments as the uninterrupted one would.

    Fine-tuning (see :mod:`megaclass.models.finetune`): ``backbone`` names the architecture
    (``"resnet:widths=32,64,128;blocks=2"`` or ``"timm:NAME"``, grammar in
    :mod:`megaclass.models.backbones`; default: the built-in CNN with ``widths``, or the
    ``init_from`` model's architecture); ``backbone_weights`` is a local safetensors file
    loaded into the backbone; ``init_from`` a megaclass model directory whose tensors of
    matching name and shape are loaded (``init_report_`` says which). ``freeze`` names
    stages (``stem``, ``stage1``..``stageN``, ``projection``; a timm backbone has
    ``backbone``, ``projection``; ``all``: every stage) that get no updates, their BatchNorm statistics fixed,
    until step ``unfreeze_after`` (None: the whole run). Loaded tensors train at
    ``pretrained_lr_scale`` times the schedule's learning rate.

    ``compatible_with`` names an old model directory: backward-compatible training (BCT,
    Shen et al. 2020) adds an influence loss through the old model's classifier, built from
    the old encoder's mean embedding of each training class (see :mod:`megaclass.growth.bct`),
    so new-model queries can be searched against old-model templates. Same ``dim`` needed.

    Speed (no effect on what is learned beyond float rounding): ``device`` is ``"auto"`` (CUDA
    when available, else CPU) or any torch device name; ``precision="bf16"`` runs the
    encoder under bfloat16 autocast (the head and the loss stay float32); ``compile`` wraps
    the encoder in ``torch.compile``. ``bench recipe`` measures what each does here.
    """

    head: str = "cosface"
    scale: float | None = None
    margin: float | None = None
    epochs: int = 3
    steps: int | None = None
    batch_size: int = 256
    m_per_class: int = 4
    optimizer: str | None = None  # None: adamw, or the head's tuned setting when only the head trains
    lr: float | None = None
    weight_decay: float = 5e-4
    momentum: float = 0.9
    warmup_steps: int | None = None
    dim: int = 128
    widths: tuple[int, ...] = (32, 64, 128)
    seed: int = 0
    num_workers: int | None = None  # DataLoader workers; None: default_num_workers(source)
    checkpoint_dir: str | None = None
    checkpoint_every: int = 0
    resume: bool = False
    progress: bool = True
    head_options: dict = field(default_factory=dict)
    focal_gamma: float = 0.0
    class_balanced: bool = False
    balance_beta: float = 0.999
    augment: str | list | dict | None = None
    backbone: str | None = None
    backbone_weights: str | None = None
    init_from: str | None = None
    freeze: tuple[str, ...] = ()
    pretrained_lr_scale: float = 1.0
    unfreeze_after: int | None = None
    compatible_with: str | None = None
    device: str = "auto"
    precision: str = "fp32"
    compile: bool = False

    def validate(self) -> None:
        if self.optimizer not in (None, "adamw", "sgd"):
            raise ConfigError(f"optimizer must be 'adamw' or 'sgd', got {self.optimizer!r}")
        if self.epochs < 1 and not self.steps:
            raise ConfigError(f"epochs must be >= 1, got {self.epochs}")
        if self.steps is not None and self.steps < 1:
            raise ConfigError(f"steps must be >= 1, got {self.steps}")
        if self.batch_size < 2 or self.m_per_class < 1 or self.batch_size % self.m_per_class:
            raise ConfigError(
                f"batch_size ({self.batch_size}) must be a multiple of m_per_class ({self.m_per_class})"
            )
        if self.checkpoint_every and not self.checkpoint_dir:
            raise ConfigError("checkpoint_every needs checkpoint_dir")
        if self.resume and not self.checkpoint_dir:
            raise ConfigError("resume needs checkpoint_dir")
        if self.head.lower() not in HEADS:
            raise ConfigError(f"unknown head {self.head!r}; choose one of {', '.join(sorted(HEADS))}")
        if self.focal_gamma < 0:
            raise ConfigError(f"focal_gamma must be >= 0, got {self.focal_gamma}")
        if self.augment is not None:
            from ..data.augment import parse_augment  # kornia loads only when augmenting

            parse_augment(self.augment)  # unknown preset, op or parameter -> ConfigError now
        if isinstance(self.freeze, str):
            self.freeze = tuple(s.strip() for s in self.freeze.split(",") if s.strip())
        self.freeze = tuple(self.freeze or ())
        if self.backbone is not None:
            parse_backbone(self.backbone)  # grammar errors now; stage names are checked in _build
        if not self.pretrained_lr_scale > 0:
            raise ConfigError(f"pretrained_lr_scale must be > 0 (freeze a stage to stop it), "
                              f"got {self.pretrained_lr_scale}")
        if self.precision not in ("fp32", "bf16"):
            raise ConfigError(f"precision must be 'fp32' or 'bf16', got {self.precision!r}")
        resolve_device(self.device)  # unknown or unavailable device -> ConfigError now
        if self.unfreeze_after is not None and (self.unfreeze_after < 0 or not self.freeze):
            raise ConfigError("unfreeze_after needs freeze (stages to unfreeze) and a step count >= 0")


class Trainer:
    """Trains an :class:`Encoder` with a :class:`Head` on a :class:`Source`.

    ``config`` (default ``TrainConfig()``) is copied, then ``overrides`` (any
    :class:`TrainConfig` field) are applied to the copy: the caller's config never changes.
    :meth:`fit` trains and returns the trainer.

    Attributes
    ----------
    config : the run's own :class:`TrainConfig` (validated copy).
    encoder_, head_ : the trained modules (after :meth:`fit`).
    history_ : list of ``{"step", "loss", "lr", "seconds"}`` records, one per step (``seconds``:
        training time so far, carried across a resumed run).
    init_report_, backbone_report_ : what ``init_from`` / ``backbone_weights`` loaded
        (:class:`~megaclass.models.finetune.InitReport`, None when not used).
    seconds_, images_per_second_ : wall time and throughput of :meth:`fit`.
    """

    is_main = True  # the process that shows progress (rank 0 of a distributed run)

    def __init__(self, source: Source, config: TrainConfig | None = None, **overrides) -> None:
        if config is not None and not isinstance(config, TrainConfig):
            raise ConfigError(f"config must be a TrainConfig, got {type(config).__name__}")
        config = copy.deepcopy(config) if config is not None else TrainConfig()
        unknown = set(overrides) - {f.name for f in fields(TrainConfig)}
        if unknown:
            raise ConfigError(f"unknown training options: {', '.join(sorted(unknown))}")
        for key, value in overrides.items():
            setattr(config, key, value)
        config.widths = tuple(config.widths)
        config.validate()
        if source.num_classes < 2:
            raise ConfigError(f"training needs at least 2 classes, the source has {source.num_classes}")
        self.source = source
        self.config = config
        self.history_: list[dict] = []
        self._feed: BatchFeed | None = None  # the run's DataLoader, made by the first epoch

    # -- setup ---------------------------------------------------------------------
    def _build(self) -> tuple[Encoder, Head, torch.optim.Optimizer]:
        c = self.config
        torch.manual_seed(c.seed)
        spec = getattr(self.source, "input_spec", None) or InputSpec(size=self.source.size)
        encoder = self._encoder(spec)
        self._resolve_optimizer()
        cls = HEADS[c.head.lower()]
        options = dict(c.head_options)
        if cls.sparse:
            options.setdefault("optimizer", "adam" if c.optimizer == "adamw" else "sgd")
            options.setdefault("momentum", c.momentum)
            options.setdefault("weight_decay", c.weight_decay)
        options = cls.source_options(self.source, options)
        reduction = self._reduction()
        if reduction is not None:
            options["reduction"] = reduction
        for key in ("scale", "margin"):
            if getattr(c, key) is not None and options.get(key) not in (None, getattr(c, key)):
                raise ConfigError(f"{key} is given twice: {getattr(c, key)} and head_options {options[key]}")
        head = self._make_head(c.head, {"scale": c.scale, "margin": c.margin, **options})
        return encoder, head, self._optimizer(encoder, head)

    def _make_head(self, name: str, options: dict) -> Head:
        return make_head(name, self.source.num_classes, self.config.dim, **options)

    def _encoder(self, spec: InputSpec) -> Encoder:
        """The new encoder: architecture, pretrained weights (backbone file, then init_from), freezer."""
        c = self.config
        reference = open_init_model(c.init_from) if c.init_from else None
        arch: dict = {"widths": c.widths}
        if c.backbone:
            arch.update(parse_backbone(c.backbone))
        elif reference is not None:
            arch = architecture_of(reference.config)
        encoder = Encoder(EncoderConfig(dim=c.dim, **arch).with_input(spec))
        self._freezer = StageFreezer(encoder.config, c.freeze, until=c.unfreeze_after)
        self.init_report_: InitReport | None = None
        self.backbone_report_: InitReport | None = None
        pretrained: set[str] = set()
        if c.backbone_weights:
            self.backbone_report_ = load_backbone_weights(encoder, c.backbone_weights)
            pretrained.update(self.backbone_report_.pretrained)
        if reference is not None:
            self.init_report_ = init_from(encoder, reference, label=str(c.init_from))
            pretrained.update(self.init_report_.pretrained)
            _log.info(self.init_report_.summary())
        self._pretrained = pretrained
        return encoder

    @property
    def head_only(self) -> bool:
        """Whether every encoder stage stays frozen for the whole run (only the head trains)."""
        f = self._freezer
        return f.until is None and set(f.stages) == set(stage_names(f.config))

    def _resolve_optimizer(self) -> None:
        """An unset optimizer is AdamW, or when only the head trains, the head's tuned head-only
        optimizer and learning rate (:mod:`megaclass.heads.tuned`, from ``bench heads``)."""
        c = self.config
        if c.optimizer is not None:
            return
        if self.head_only:
            c.optimizer, tuned_lr = head_only_defaults(c.head)
            if c.lr is None:
                c.lr = tuned_lr
        else:
            c.optimizer = "adamw"

    def _reduction(self) -> LossReduction | None:
        """The loss reduction ``focal_gamma`` and ``class_balanced`` ask for (None: the plain mean)."""
        c = self.config
        weight = None
        if c.class_balanced:
            weight = class_weights(self.source.labels, beta=c.balance_beta,
                                   num_classes=self.source.num_classes)
        if not c.focal_gamma and weight is None:
            return None
        return LossReduction(focal_gamma=c.focal_gamma, class_weight=weight)

    def _loss_options(self, head: Head) -> Head:
        """``head`` (loaded from a checkpoint) with the run's loss reduction (not saved with it)."""
        reduction = self._reduction()
        if reduction is not None:
            head.reduction = reduction
        return head

    def _optimizer(self, encoder: Encoder, head: Head) -> torch.optim.Optimizer:
        c = self.config
        # Tensors loaded from a pretrained model form a second group whose learning rate is the
        # schedule's times pretrained_lr_scale (the loop multiplies each group's lr_scale); a run
        # without pretrained tensors keeps the single group older checkpoints hold.
        pretrained: set[str] = getattr(self, "_pretrained", set())
        named = list(encoder.named_parameters())
        params: list = [{"params": [p for n, p in named if n not in pretrained] + list(head.parameters()),
                         "lr_scale": 1.0}]
        if any(n in pretrained for n, _ in named):
            params.append({"params": [p for n, p in named if n in pretrained],
                           "lr_scale": c.pretrained_lr_scale})
        if c.optimizer == "adamw":
            return torch.optim.AdamW(params, lr=self.peak_lr, weight_decay=c.weight_decay)
        return torch.optim.SGD(params, lr=self.peak_lr, momentum=c.momentum,
                               weight_decay=c.weight_decay, nesterov=True)

    @property
    def peak_lr(self) -> float:
        c = self.config
        return c.lr if c.lr is not None else (3e-3 if c.optimizer == "adamw" else 0.1)

    def _batches_per_epoch(self, classes_per_batch: int) -> int:
        return max(1, len(self.source) // (classes_per_batch * self.config.m_per_class))

    def lr_at(self, step: int, total: int) -> float:
        """Linear warm-up then cosine decay to 1 % of the peak learning rate."""
        warm = self.config.warmup_steps
        if warm is None:
            warm = min(300, max(1, total // 20))
        if step < warm:
            return self.peak_lr * (step + 1) / warm
        t = (step - warm) / max(1, total - warm)
        return self.peak_lr * (0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * min(1.0, t))))

    def _resume(self, encoder: Encoder, head: Head, opt, device):
        """``(encoder, head, optimizer, step)`` from the latest checkpoint when resuming, else as given."""
        c = self.config
        ckpt = latest_checkpoint(c.checkpoint_dir) if (c.resume and c.checkpoint_dir) else None
        if ckpt is None:
            return encoder, head, opt, 0
        encoder, head, opt_state, info = load_checkpoint(ckpt)
        head = self._loss_options(head).to(device)
        encoder.to(device)
        opt = self._optimizer(encoder, head)  # load_state_dict moves the state to the params' device
        opt.load_state_dict(opt_state)
        self.history_ = info.get("history", [])
        if "rng_state" in info:
            torch.set_rng_state(info["rng_state"])
        return encoder, head, opt, int(info["step"])

    def _forward_fn(self, encoder: Encoder):
        """What the loop calls on a batch: the encoder (compiled with ``compile``)."""
        return torch.compile(encoder) if self.config.compile else encoder

    # -- the loop ------------------------------------------------------------------
    def fit(self) -> Trainer:
        """Run training (resuming from the latest checkpoint if asked); return the trainer.

        The trained encoder is ``encoder_`` (on CPU, in eval mode), the head ``head_``."""
        c = self.config
        m = c.m_per_class
        classes_per_batch = min(c.batch_size // m, self.source.num_classes)
        per_epoch = self._batches_per_epoch(classes_per_batch)
        total = c.steps if c.steps else per_epoch * c.epochs
        device = resolve_device(c.device)
        encoder, head, opt = self._build()
        encoder.to(device)
        head.to(device)
        encoder, head, opt, step = self._resume(encoder, head, opt, device)
        if hasattr(head, "update_in_backward"):  # Partial FC: row update inside backward (less peak memory)
            head.update_in_backward(lambda: opt.param_groups[0]["lr"])
        influence = None  # BCT: the old model's classifier, frozen
        if c.compatible_with:
            from ..growth.bct import influence_loss

            influence, self.compatible_fingerprint_ = influence_loss(c.compatible_with, self.source, head,
                                                                     dim=c.dim)
            influence.to(device)
        augment = None
        if c.augment is not None:
            from ..data.augment import build_augment

            augment = build_augment(c.augment, channels=encoder.config.in_channels,
                                    size=encoder.config.input_size, seed=c.seed)
        encoder.to(memory_format=torch.channels_last)  # ~10-30 % faster convolutions on CPU
        forward = self._forward_fn(encoder)
        bf16 = c.precision == "bf16"
        encoder.train()
        head.train()
        labels = self.source.labels
        started = time.perf_counter()
        before = float(self.history_[-1].get("seconds", 0.0)) if self.history_ else 0.0  # a resumed run's
        images = 0
        with TrainProgress(total, enabled=c.progress and self.is_main, start=step) as bar:
            while step < total:
                epoch, offset = divmod(step, per_epoch)
                batches = self._epoch_batches(labels, classes_per_batch, epoch, per_epoch)[offset:]
                batches = batches[: total - step]
                for x, y in self._loader(batches, epoch):
                    lr = self.lr_at(step, total)
                    for group in opt.param_groups:  # group 0 (new layers, head) at the schedule's lr
                        group["lr"] = lr * group.get("lr_scale", 1.0)
                    self._freezer.update(encoder, step)  # frozen stages: no grad, BatchNorm in eval
                    if augment is not None:
                        x = augment(x, step=step)
                    x = x.to(device, non_blocking=True).contiguous(memory_format=torch.channels_last)
                    y = y.to(device, non_blocking=True)
                    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                        emb = forward(x)
                    if not emb.requires_grad:  # a frozen encoder: sparse heads update in backward
                        emb = emb.detach().requires_grad_(True)
                    loss = head(emb.float(), y)
                    if influence is not None:
                        loss = loss + influence(emb, y)
                    if not torch.isfinite(loss):
                        raise ConfigError(
                            f"loss became {loss.item()} at step {step}: lower the learning rate"
                        )
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                    head.sparse_step(opt.param_groups[0]["lr"])
                    step += 1
                    images += len(y)
                    rec = {"step": step, "loss": round(loss.item(), 5), "lr": opt.param_groups[0]["lr"],
                           "seconds": round(before + time.perf_counter() - started, 3)}
                    if influence is not None:
                        rec["influence"] = round(influence.last_, 5)
                    self.history_.append(rec)
                    bar.update(step, rec["loss"], images / (time.perf_counter() - started))
                    if c.checkpoint_every and step % c.checkpoint_every == 0:
                        self._checkpoint(encoder, head, opt, step, epoch)
        self.seconds_ = time.perf_counter() - started
        self.images_per_second_ = images / self.seconds_ if self.seconds_ > 0 else 0.0
        if c.checkpoint_dir and (not c.checkpoint_every or step % c.checkpoint_every):
            self._checkpoint(encoder, head, opt, step, step // per_epoch)
        self._freezer.release(encoder)
        encoder.to("cpu")  # the saved model and its callers work on CPU; a GPU run hands it back there
        head.to("cpu")
        encoder.eval()
        head.eval()
        encoder.config.extra = {"trained_with": {
            "head": c.head, "classes": self.source.num_classes, "steps": step,
            "batch_size": classes_per_batch * m, "source": type(self.source).__name__}}
        record = encoder.config.extra["trained_with"]  # + the head's settings (scale, margin, ...)
        record.update({k: v for k, v in head.hparams().items()
                       if k not in record and isinstance(v, (int, float, str, bool))})
        if augment is not None:
            encoder.config.extra["trained_with"]["augment"] = augment.describe()
        self._record_finetune(encoder.config.extra["trained_with"])
        self.encoder_, self.head_ = encoder, head
        return self

    def _record_finetune(self, record: dict) -> None:
        c = self.config
        if self.init_report_ is not None:
            record["init_from"] = self.init_report_.fingerprint
        if self.backbone_report_ is not None:
            record["backbone_weights"] = self.backbone_report_.fingerprint  # sha256 of the file, 16 hex
        if c.compatible_with:
            record["compatible_with"] = self.compatible_fingerprint_
        if c.freeze:
            record["freeze"] = list(c.freeze)
            if c.unfreeze_after is not None:
                record["unfreeze_after"] = c.unfreeze_after
        if self._pretrained and c.pretrained_lr_scale != 1.0:
            record["pretrained_lr_scale"] = c.pretrained_lr_scale

    def _epoch_batches(self, labels: np.ndarray, cpb: int, epoch: int, n: int) -> list[list[int]]:
        sampler = MPerClassSampler(labels, m=self.config.m_per_class,
                                   batch_size=cpb * self.config.m_per_class,
                                   num_batches=n, seed=self.config.seed)
        sampler.set_epoch(epoch)
        return [list(b) for b in sampler]

    def _loader(self, batches: list[list[int]], epoch: int):
        """This epoch's batches through the run's one persistent DataLoader (:class:`BatchFeed`)."""
        if self._feed is None or self._feed.source is not self.source:
            self._feed = BatchFeed(self.source, self.config.num_workers, len(batches))
        return self._feed(batches, epoch)

    def _checkpoint(self, encoder, head, opt, step: int, epoch: int) -> None:
        info = {"step": step, "epoch": epoch, "config": _jsonable(asdict(self.config)),
                "history": self.history_}
        if self.config.checkpoint_dir is None:
            raise RuntimeError("a checkpoint was asked for without checkpoint_dir")
        save_checkpoint(self.config.checkpoint_dir, encoder=encoder, head=head, optimizer=opt, info=info)


def train_encoder(source: Source, *, head: str = "cosface", epochs: int = 3, **options) -> Encoder:
    """Train an encoder on ``source`` with the named head and return it (see :class:`TrainConfig`)."""
    return Trainer(source, TrainConfig(head=head, epochs=epochs), **options).fit().encoder_


def _jsonable(d: dict) -> dict:
    return {k: (list(v) if isinstance(v, tuple) else str(v) if isinstance(v, Path) else v)
            for k, v in d.items()}
