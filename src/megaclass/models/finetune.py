"""Fine-tuning: start from an existing model, freeze stages by name, unfreeze later.

Initialising from a model (``--init-from MODEL_DIR``)
    :func:`init_from` copies every parameter and BatchNorm statistic of the old model
    whose **name and shape** match a tensor of the new encoder, keeps the new
    encoder's initialisation for the rest, and returns an :class:`InitReport` saying
    which were loaded and which were not (and why). The input convolution is
    *adapted* when only its input channels differ: a 1-channel kernel becomes a
    3-channel one by repeating it on each channel divided by 3, and a 3-channel kernel
    becomes a 1-channel one by summing its channels, so a grey image gives the same
    response as before. The input normalisation (``input_shift``/``input_scale``) is
    never copied: it belongs to the new run's input contract. An old model with
    nothing compatible raises :class:`~megaclass.errors.ConfigError`; so does an
    imported ONNX encoder (it has no trainable weights).

Stages (``--freeze``)
    The built-in CNN's stages are ``stem`` (first conv + BN), ``stage1`` ..
    ``stageN`` (the residual blocks of each width, N = ``len(widths)``) and
    ``projection`` (linear + BN to the embedding). A timm backbone has ``backbone``
    and ``projection``. A frozen stage's parameters get no gradient (so neither the
    optimiser nor weight decay moves them) and its BatchNorm layers stay in eval mode
    (running statistics unchanged). :class:`StageFreezer` unfreezes them after
    ``until`` steps.

Example
-------
>>> from megaclass.models import Encoder, EncoderConfig
>>> old = Encoder(EncoderConfig(dim=16, widths=(8, 16)))
>>> new = Encoder(EncoderConfig(dim=32, widths=(8, 16)))
>>> report = init_from(new, old)
>>> report.counts()
(30, 35)
>>> [name for name, _ in report.new]
['projection.2.weight', 'projection.3.weight', 'projection.3.bias', 'projection.3.running_mean', \
'projection.3.running_var']
>>> stage_names(new.config)
['stem', 'stage1', 'stage2', 'projection']
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from ..errors import ConfigError
from ..tensorio import read_json, read_tensors
from .backbones import describe_backbone
from .encoder import CONFIG_FILE, Encoder, EncoderConfig, load_encoder

_CONTRACT_BUFFERS = ("input_shift", "input_scale")
_SHOWN = 8  # names listed per kind in a summary before "and N more"


# -- stages ----------------------------------------------------------------------------
def stage_names(config: EncoderConfig) -> list[str]:
    """The stage names of an architecture, input to output."""
    if config.backbone != "resnet":
        return ["backbone", "projection"]
    return ["stem", *(f"stage{i + 1}" for i in range(len(config.widths))), "projection"]


def stage_of(name: str, config: EncoderConfig) -> str | None:
    """The stage a parameter, buffer or module name belongs to (None: the input normalisation)."""
    head, _, rest = name.partition(".")
    if head == "projection":
        return "projection"
    if head != "features":
        return None
    if config.backbone != "resnet":
        return "backbone"
    index = int(rest.partition(".")[0]) if rest else 0
    return "stem" if index < 3 else f"stage{(index - 3) // config.blocks + 1}"


def parse_stages(stages: str | Iterable[str] | None, config: EncoderConfig) -> tuple[str, ...]:
    """Stage names from ``"stem,stage1"`` or a list (``"all"``: every stage, so only a head
    trains); ConfigError listing the valid ones."""
    if stages is None:
        return ()
    items = stages.split(",") if isinstance(stages, str) else list(stages)
    names = tuple(dict.fromkeys(s.strip() for s in items if s and s.strip()))
    valid = stage_names(config)
    unknown = [s for s in names if s not in valid and s != "all"]
    if unknown:
        raise ConfigError(f"unknown stage {', '.join(map(repr, unknown))} to freeze; this encoder's "
                          f"stages are {', '.join(valid)} (or all)")
    return tuple(valid) if "all" in names else names


class StageFreezer:
    """Keeps the named stages of an encoder frozen until step ``until`` (None: for the whole run).

    Call :meth:`update` at the start of every step (it is idempotent and works on any encoder
    of the same architecture, e.g. one restored from a checkpoint) and :meth:`release` at the
    end so the returned model is trainable again.

    Example
    -------
    >>> from megaclass.models import Encoder, EncoderConfig
    >>> enc = Encoder(EncoderConfig(widths=(8, 16))).train()
    >>> freezer = StageFreezer(enc.config, ["stem"], until=10)
    >>> freezer.update(enc, step=0); enc.features[0].weight.requires_grad, enc.features[1].training
    (False, False)
    >>> freezer.update(enc, step=10); enc.features[0].weight.requires_grad, enc.features[1].training
    (True, True)
    """

    def __init__(self, config: EncoderConfig, stages: str | Iterable[str] | None,
                 until: int | None = None) -> None:
        self.config = config
        self.stages = parse_stages(stages, config)
        self.until = until
        self._state: tuple[int, bool] | None = None

    def frozen_at(self, step: int) -> bool:
        return bool(self.stages) and (self.until is None or step < self.until)

    def update(self, encoder: nn.Module, step: int) -> None:
        frozen = self.frozen_at(step)
        if self._state != (id(encoder), frozen):
            self._apply(encoder, frozen)
            self._state = (id(encoder), frozen)

    def release(self, encoder: nn.Module) -> None:
        self._apply(encoder, False)
        self._state = None

    def _apply(self, encoder: nn.Module, frozen: bool) -> None:
        if not self.stages:
            return
        chosen = set(self.stages)
        for name, p in encoder.named_parameters():
            if stage_of(name, self.config) in chosen:
                p.requires_grad_(not frozen)
        for name, module in encoder.named_modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm) and stage_of(name, self.config) in chosen:
                module.train(encoder.training and not frozen)


# -- initialising from another model -----------------------------------------------------
@dataclass
class InitReport:
    """What :func:`init_from` or :func:`load_backbone_weights` copied into an encoder.

    Attributes
    ----------
    source : where the weights came from; fingerprint : its model fingerprint (or file hash).
    loaded : names copied as they were; adapted : ``{name: how}`` for the input convolution.
    new : ``(name, reason)`` of tensors left at their initialisation.
    unused : names in the source that went nowhere; notes : other differences worth knowing.
    """

    source: str
    fingerprint: str
    loaded: list[str] = field(default_factory=list)
    adapted: dict[str, str] = field(default_factory=dict)
    new: list[tuple[str, str]] = field(default_factory=list)
    unused: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def pretrained(self) -> list[str]:
        """Names that hold weights from the source (loaded or adapted)."""
        return self.loaded + list(self.adapted)

    def counts(self) -> tuple[int, int]:
        """``(tensors taken from the source, tensors of the new encoder considered)``."""
        return len(self.pretrained), len(self.pretrained) + len(self.new)

    def summary(self) -> str:
        done, total = self.counts()
        parts = [f"init from {self.source} (fingerprint {self.fingerprint}): loaded {done}/{total} tensors"]
        if self.adapted:
            parts.append("adapted " + "; ".join(f"{n}: {how}" for n, how in self.adapted.items()))
        if self.new:
            parts.append("new (initialised, not loaded): " + _listing(f"{n} ({why})" for n, why in self.new))
        if self.unused:
            parts.append(f"unused from the source: {_listing(self.unused)}")
        parts.extend(self.notes)
        return "; ".join(parts)

    def to_dict(self) -> dict:
        done, total = self.counts()
        return {"source": self.source, "fingerprint": self.fingerprint, "loaded": done, "total": total,
                "adapted": dict(self.adapted), "new": [n for n, _ in self.new], "unused": list(self.unused),
                "notes": list(self.notes)}


def open_init_model(path: str | os.PathLike) -> Encoder:
    """The trainable megaclass model in directory ``path`` or shipped under that name
    (``reference``); ConfigError otherwise."""
    from .pretrained import resolve_model_path

    root = resolve_model_path(path)
    if not (root / CONFIG_FILE).is_file():
        raise ConfigError(f"--init-from {root}: not a megaclass model directory (no {CONFIG_FILE})")
    kind = read_json(root / CONFIG_FILE).get("kind")
    model = None if kind == "megaclass.onnx_encoder" else load_encoder(root)
    if not isinstance(model, Encoder):
        raise ConfigError(f"--init-from {root}: an imported ONNX encoder has no trainable weights; "
                          "fine-tuning needs a megaclass-trained model")
    return model


def architecture_of(config: EncoderConfig) -> dict:
    """The EncoderConfig fields that define the backbone (what ``--init-from`` reuses)."""
    return {"backbone": config.backbone, "widths": tuple(config.widths), "blocks": config.blocks,
            "stem_stride": config.stem_stride}


def init_from(encoder: Encoder, source: Encoder | str | os.PathLike, *,
              label: str | None = None) -> InitReport:
    """Copy every tensor of ``source`` (a model or model directory) whose name and shape match
    ``encoder``'s into ``encoder``, adapt the input convolution across channel counts, and say
    what was and was not loaded. ConfigError when nothing fits. ``label`` names the source in
    messages (default: its path)."""
    label = label or (str(source) if not isinstance(source, Encoder) else "model")
    model = source if isinstance(source, Encoder) else open_init_model(source)
    report = InitReport(source=label, fingerprint=model.fingerprint())
    _merge(encoder, model.state_dict(), report, lambda name: True)
    if not report.pretrained:
        raise ConfigError(
            f"--init-from {label}: nothing in it fits the new encoder (no tensor matches by name and "
            f"shape; it is {describe_backbone(model.config)} with dim {model.config.dim}, the new "
            f"encoder is {describe_backbone(encoder.config)} with dim {encoder.config.dim}); "
            "drop --backbone to reuse its architecture"
        )
    old, new = model.config.input_spec, encoder.config.input_spec
    if old != new:
        diffs = [f"{k} {_value(getattr(old, k))} -> {_value(getattr(new, k))}"
                 for k in ("channels", "size", "resize", "polarity", "mean", "std")
                 if _value(getattr(old, k)) != _value(getattr(new, k))]
        report.notes.append("input contract differs from the source model (" + ", ".join(diffs) +
                            "): the loaded layers see differently prepared images at first")
    return report


def load_backbone_weights(encoder: Encoder, path: str | os.PathLike) -> InitReport:
    """Load a local safetensors file into the encoder's backbone (``encoder.features``).

    Keys are the backbone's own names (e.g. a timm ``model.safetensors``: ``conv1.weight``,
    ...; a classifier such as ``fc.*`` is reported unused); keys already prefixed
    ``features.`` are accepted too. Nothing is downloaded: a missing file is a ConfigError.
    """
    file = Path(path)
    if not file.is_file():
        raise ConfigError(
            f"backbone weights file not found: {file}. megaclass never downloads weights at run time "
            "(timm models are built with pretrained=False): save the architecture's weights as a "
            "local .safetensors file (for timm, the model.safetensors of that model) and pass it "
            "with --backbone-weights"
        )
    tensors = read_tensors(file, "backbone weights")
    if not all(k.startswith("features.") for k in tensors):
        tensors = {f"features.{k}": v for k, v in tensors.items()}
    digest = hashlib.sha256()
    with file.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    report = InitReport(source=str(file), fingerprint=digest.hexdigest()[:16])
    _merge(encoder, tensors, report, lambda name: name.startswith("features."))
    if not report.pretrained:
        raise ConfigError(f"backbone weights {file}: no tensor matches the {encoder.config.backbone} "
                          f"backbone by name and shape (first keys: {_listing(sorted(tensors), 4)})")
    return report


def _merge(encoder: Encoder, source: dict[str, torch.Tensor], report: InitReport, wanted) -> None:
    target = encoder.state_dict()
    stem = _input_conv(encoder)
    merged = dict(target)
    for name, value in target.items():
        if _skipped(name) or not wanted(name):
            if name.endswith("num_batches_tracked") and wanted(name) and name in source:
                merged[name] = source[name].to(value.dtype).reshape(value.shape)  # follows its BN, uncounted
            continue
        if name not in source:
            report.new.append((name, "not in the source"))
            continue
        src = source[name]
        if src.shape == value.shape:
            merged[name] = src.to(value.dtype)
            report.loaded.append(name)
            continue
        adapted = _adapt_input_conv(src, value) if name == stem else None
        if adapted is not None:
            merged[name] = adapted.to(value.dtype)
            cin, cout = src.shape[1], value.shape[1]
            report.adapted[name] = (
                f"{cin} -> {cout} input channels ("
                + (f"kernel repeated on each channel / {cout}" if cin == 1 else "kernel summed over channels")
                + ": a grey image gives the same response)")
            continue
        report.new.append((name, f"shape {_shape(value)} vs {_shape(src)} in the source"))
    report.unused = [n for n in source if not _skipped(n) and n not in target]
    encoder.load_state_dict(merged, strict=True)


def _adapt_input_conv(src: torch.Tensor, dst: torch.Tensor) -> torch.Tensor | None:
    """A kernel for ``dst``'s input channels from ``src`` (same otherwise), or None."""
    if src.ndim != 4 or dst.ndim != 4 or src.shape[0] != dst.shape[0] or src.shape[2:] != dst.shape[2:]:
        return None
    cin, cout = src.shape[1], dst.shape[1]
    if cin == 1:
        return src.repeat(1, cout, 1, 1) / cout
    if cout == 1:
        return src.sum(dim=1, keepdim=True)
    return None


def _input_conv(encoder: Encoder) -> str | None:
    """State name of the convolution that reads the images (the first with in_channels inputs)."""
    for name, module in encoder.named_modules():
        if isinstance(module, nn.Conv2d) and module.in_channels == encoder.config.in_channels:
            return f"{name}.weight"
    return None


def _skipped(name: str) -> bool:
    # BN step counters carry no weights (momentum is set); the input normalisation is the new contract's
    return name.endswith("num_batches_tracked") or name in _CONTRACT_BUFFERS


def _value(v):
    """A per-channel tuple whose channels agree, as one number (1 and 3 channels compare)."""
    return v[0] if isinstance(v, tuple) and len(set(v)) == 1 else v


def _shape(t: torch.Tensor) -> str:
    return "x".join(str(s) for s in t.shape) or "scalar"


def _listing(names: Iterable[str], shown: int = _SHOWN) -> str:
    names = list(names)
    text = ", ".join(names[:shown])
    return text + (f" and {len(names) - shown} more" if len(names) > shown else "")
