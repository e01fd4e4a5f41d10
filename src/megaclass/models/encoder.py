"""The embedding model: a small residual CNN -> projection -> L2-normalised vector.

An :class:`Encoder` maps images ``(N, 1, H, W)`` (float32 in ``[0, 1]``, light
ink on a dark background) to embeddings ``(N, dim)`` whose rows have unit norm,
so the inner product of two embeddings is their cosine similarity. Models are
saved as ``model.safetensors`` + ``config.json``; loading never unpickles.

Example
-------
>>> import torch
>>> from megaclass.models import Encoder, EncoderConfig
>>> enc = Encoder(EncoderConfig(dim=64))
>>> enc.embed(torch.rand(3, 1, 32, 32)).shape
torch.Size([3, 64])
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn

from ..data.input_spec import InputSpec
from ..errors import ConfigError, InvalidInputError, ModelFormatError
from ..tensorio import read_json, read_tensors

if TYPE_CHECKING:
    from .onnx_encoder import OnnxEncoder

FORMAT_VERSION = 1
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"


@dataclass
class EncoderConfig:
    """Architecture of an :class:`Encoder` (everything needed to rebuild it).

    Parameters
    ----------
    dim : embedding dimension D.
    input_size : side of the square grayscale input images.
    widths : channels of the residual stages; each stage after the first halves
        the resolution.
    blocks : residual blocks per stage.
    stem_stride : stride of the first convolution (2 halves the input at once,
        which keeps a CPU step cheap at 32x32).
    backbone : ``"resnet"`` (the built-in residual CNN above: ``widths``, ``blocks``,
        ``stem_stride``) or ``"timm:NAME"`` (a timm architecture built with
        ``pretrained=False``; needs the optional ``timm`` package; ``widths``/``blocks``
        unused). See :mod:`megaclass.models.backbones` for the ``--backbone`` grammar.
    in_channels, input_size, resize, polarity, mean, std : the model's input contract
        (:class:`~megaclass.data.input_spec.InputSpec`; ``mean``/``std`` in pixel units,
        applied inside :meth:`Encoder.forward`). Configs written before these fields
        existed load as 1-channel, pad, auto polarity, identity normalisation.
    """

    dim: int = 128
    input_size: int = 32
    in_channels: int = 1
    widths: tuple[int, ...] = (32, 64, 128)
    blocks: int = 1
    stem_stride: int = 2
    backbone: str = "resnet"
    resize: str = "pad"
    polarity: str = "auto"
    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (255.0,)
    extra: dict = field(default_factory=dict)

    @property
    def input_spec(self) -> InputSpec:
        """The input contract this model was trained with."""
        return InputSpec(channels=self.in_channels, size=self.input_size, resize=self.resize,
                         polarity=self.polarity, mean=self.mean, std=self.std)

    def with_input(self, spec: InputSpec) -> EncoderConfig:
        """A copy of this config taking every input field from ``spec``."""
        return replace(self, in_channels=spec.channels, input_size=spec.size, resize=spec.resize,
                       polarity=spec.polarity, mean=spec.mean, std=spec.std)

    def validate(self) -> None:
        if self.dim < 2:
            raise ConfigError(f"embedding dim must be >= 2, got {self.dim}")
        if self.input_size < 8:
            raise ConfigError(f"input_size must be >= 8, got {self.input_size}")
        if not self.widths or any(w < 1 for w in self.widths):
            raise ConfigError(f"widths must be positive channel counts, got {self.widths}")
        if self.blocks < 1 or self.stem_stride not in (1, 2):
            raise ConfigError("blocks must be >= 1 and stem_stride 1 or 2")
        if self.backbone != "resnet" and not (self.backbone.startswith("timm:") and self.backbone[5:]):
            raise ConfigError(f"backbone must be 'resnet' or 'timm:NAME', got {self.backbone!r}")
        spec = self.input_spec  # validates channels, resize, polarity, mean/std
        self.mean, self.std = spec.mean, spec.std

    @classmethod
    def from_dict(cls, data: dict) -> EncoderConfig:
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        known["widths"] = tuple(known.get("widths", cls.widths))
        for key in ("mean", "std"):
            if key in known:
                known[key] = tuple(known[key]) if isinstance(known[key], list | tuple) else (known[key],)
        if "polarity" not in known and int(known.get("in_channels", 1)) == 3:
            known["polarity"] = "none"
        cfg = cls(**known)
        cfg.validate()
        return cfg


class _ResidualBlock(nn.Module):
    """3x3 conv-BN-ReLU-conv-BN with an identity (or 1x1 projection) shortcut."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return F.relu(y + self.shortcut(x))


def _resnet_features(c: EncoderConfig) -> tuple[nn.Sequential, int]:
    """The built-in CNN: stem (conv-BN-ReLU, ``features.0-2``), then ``blocks`` residual blocks
    per width (``features.3`` on); returns the module and its output channels."""
    w0 = c.widths[0]
    layers: list[nn.Module] = [
        nn.Conv2d(c.in_channels, w0, 3, c.stem_stride, 1, bias=False),
        nn.BatchNorm2d(w0),
        nn.ReLU(inplace=True),
    ]
    cin = w0
    for stage, width in enumerate(c.widths):
        for b in range(c.blocks):
            layers.append(_ResidualBlock(cin, width, 2 if (b == 0 and stage > 0) else 1))
            cin = width
    return nn.Sequential(*layers), cin


class Encoder(nn.Module):
    """Small residual CNN producing L2-normalised embeddings.

    Attributes
    ----------
    config : EncoderConfig
    dim : int, the embedding dimension.
    """

    input_shift: torch.Tensor  # buffers, present when the contract has mean/std
    input_scale: torch.Tensor

    def __init__(self, config: EncoderConfig | None = None) -> None:
        super().__init__()
        self.config = config or EncoderConfig()
        self.config.validate()
        c = self.config
        self.pool: nn.Module
        if c.backbone.startswith("timm:"):  # pooled (N, F) features; state names under features.*
            from .backbones import timm_features

            self.features, cin = timm_features(c.backbone[5:], c.in_channels)
            self.pool = nn.Identity()
        else:
            self.features, cin = _resnet_features(c)
            self.pool = nn.AdaptiveAvgPool2d(1)
        spec = c.input_spec
        # (255 x - mean) / std == (x - mean/255) * (255/std): fixed buffers, saved with the weights
        # only when they are not the identity (so old model files load unchanged).
        self._normalise = not spec.is_identity_normalisation
        if self._normalise:
            shape = (1, spec.channels, 1, 1)
            self.register_buffer("input_shift", torch.tensor(spec.mean).view(shape) / 255.0)
            self.register_buffer("input_scale", 255.0 / torch.tensor(spec.std).view(shape))
        self.projection = nn.Sequential(
            nn.Flatten(), nn.Dropout(0.0), nn.Linear(cin, c.dim, bias=False), nn.BatchNorm1d(c.dim)
        )

    @property
    def dim(self) -> int:
        return self.config.dim

    @property
    def input_size(self) -> int:
        return self.config.input_size

    @property
    def input_spec(self) -> InputSpec:
        """What :func:`~megaclass.data.images.to_batch` must produce for this model."""
        return self.config.input_spec

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """``(N, C, H, W)`` images in ``[0, 1]`` -> ``(N, dim)`` unit-norm embeddings (differentiable)."""
        if self._normalise:
            images = (images - self.input_shift) * self.input_scale
        x = self.pool(self.features(images))
        return F.normalize(self.projection(x), dim=1)

    @torch.no_grad()
    def embed(self, images: torch.Tensor, *, batch_size: int = 512) -> torch.Tensor:
        """Embed images in eval mode, in batches; returns a CPU float32 ``(N, dim)`` tensor."""
        if images.ndim != 4 or images.shape[1] != self.config.in_channels:
            raise InvalidInputError(
                f"expected images of shape (N, {self.config.in_channels}, H, W), "
                f"got {tuple(images.shape)}"
            )
        if images.shape[0] == 0:
            return torch.empty(0, self.dim)
        was_training = self.training
        self.eval()
        try:
            out = [self(images[i : i + batch_size].float()) for i in range(0, len(images), batch_size)]
        finally:
            self.train(was_training)
        return torch.cat(out).cpu()

    def fingerprint(self) -> str:
        """A short hash of config + weights: which model produced a template."""
        cfg = _config_dict(self.config)
        if self.config.input_spec == _legacy_spec(self.config):  # fingerprints of older models stay valid
            for key in ("resize", "polarity", "mean", "std"):
                del cfg[key]
        if cfg["backbone"] == "resnet":  # the only architecture before backbones existed
            del cfg["backbone"]
        h = hashlib.sha256(json.dumps(cfg, sort_keys=True).encode())
        for name, t in sorted(self.state_dict().items()):
            h.update(name.encode())
            h.update(t.detach().cpu().contiguous().numpy().tobytes())
        return h.hexdigest()[:16]

    # -- persistence -------------------------------------------------------------
    def save(self, path: str | os.PathLike) -> Path:
        """Write ``config.json`` + ``model.safetensors`` into directory ``path`` (atomically per file)."""
        out = Path(path)
        out.mkdir(parents=True, exist_ok=True)
        tensors = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
        _atomic(out / WEIGHTS_FILE, lambda tmp: save_file(tensors, tmp, metadata={"format": "megaclass"}))
        cfg = {"format_version": FORMAT_VERSION, "kind": "megaclass.encoder", **_config_dict(self.config)}
        cfg["fingerprint"] = self.fingerprint()
        _atomic(out / CONFIG_FILE, lambda tmp: Path(tmp).write_text(json.dumps(cfg, indent=2)))
        return out

    @classmethod
    def load(cls, path: str | os.PathLike) -> Encoder:
        """Load a model directory written by :meth:`save` (safetensors: no pickle)."""
        root = Path(path)
        cfg_path, w_path = root / CONFIG_FILE, root / WEIGHTS_FILE
        if not cfg_path.is_file() or not w_path.is_file():
            raise ModelFormatError(
                f"{root} is not a megaclass model directory (needs {CONFIG_FILE} and {WEIGHTS_FILE})"
            )
        data = read_json(cfg_path)
        if data.get("kind") != "megaclass.encoder":
            raise ModelFormatError(f"{cfg_path} does not describe a megaclass encoder")
        if data.get("format_version", 0) > FORMAT_VERSION:
            raise ModelFormatError(
                f"{root} was written by a newer megaclass (format {data['format_version']})"
            )
        model = cls(EncoderConfig.from_dict(data))
        state = read_tensors(w_path, "weights")
        try:
            model.load_state_dict(state, strict=True)
        except RuntimeError as exc:  # names or shapes that do not fit the config
            raise ModelFormatError(f"cannot load weights from {w_path}: {exc}") from exc
        model.eval()
        return model

    @classmethod
    def from_onnx(cls, path: str | os.PathLike, **contract) -> OnnxEncoder:
        """An encoder for an ONNX embedding model (onnxruntime, CPU); ``contract`` as in
        :meth:`OnnxEncoder.from_onnx <megaclass.models.onnx_encoder.OnnxEncoder.from_onnx>`
        (size, channels, mean, std, dim, layout, l2_normalise, resize, polarity).

        Returns an :class:`~megaclass.models.onnx_encoder.OnnxEncoder` (not a torch module:
        it embeds, it does not train); ``.save(dir)`` makes it a model directory.
        """
        from .onnx_encoder import OnnxEncoder

        return OnnxEncoder.from_onnx(path, **contract)


def load_encoder(path: str | os.PathLike) -> Encoder | OnnxEncoder:
    """Load any megaclass model directory: a trained :class:`Encoder` or an imported ONNX
    encoder (:class:`~megaclass.models.onnx_encoder.OnnxEncoder`), by its ``config.json`` kind.
    A shipped model's name (``"reference"``, :mod:`megaclass.models.pretrained`) loads it
    when no file or folder of that name exists.

    Both have the interface the rest of megaclass uses (``dim``, ``input_size``,
    ``input_spec``, ``embed``, ``fingerprint``), so a model directory of either kind works
    for enroll, identify, verify, evaluate and the service.
    """
    from .pretrained import resolve_model_path

    path = resolve_model_path(path)  # a shipped model's name (-m reference) -> its directory
    cfg_path = path / CONFIG_FILE
    kind = read_json(cfg_path).get("kind") if cfg_path.is_file() else None
    if kind == "megaclass.onnx_encoder":
        from .onnx_encoder import OnnxEncoder

        return OnnxEncoder.load(path)
    return Encoder.load(path)  # also names what is missing or wrong for anything else


def _legacy_spec(config: EncoderConfig) -> InputSpec:
    """The contract every model had before it was recorded (what an old config.json means)."""
    return InputSpec(channels=config.in_channels, size=config.input_size)


def _config_dict(config: EncoderConfig) -> dict:
    d = asdict(config)
    for key in ("widths", "mean", "std"):
        d[key] = list(d[key])
    return d


def _atomic(target: Path, write) -> None:
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
