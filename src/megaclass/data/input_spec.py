"""The model input contract: what tensor a model expects, recorded with the model.

Every model (a trained :class:`~megaclass.models.Encoder` or an imported ONNX
encoder) carries an :class:`InputSpec` in its ``config.json``; every entry point
(training, enroll, identify, evaluate, the service) converts samples with
:func:`megaclass.data.images.to_batch` under that spec, so the same photo gives
the same tensor everywhere.

Fields
------
channels : 1 (grayscale, luma of colour images) or 3 (RGB; grayscale images are
    repeated on the three channels).
size : side of the square input.
resize : how a non-square image becomes square: ``"pad"`` (scale the longer
    side to ``size``, pad with the border's median colour: keeps the whole
    drawing; the handwriting default), ``"crop"`` (scale the shorter side to
    ``size``, cut the centre: the photo default) or ``"stretch"`` (scale each
    side to ``size``: for crops that are already aligned, e.g. faces).
polarity : ``"auto"`` (invert when the border is mostly light so that ink is
    light on dark: only for handwriting) or ``"none"`` (keep the image as it is;
    the default for 3-channel models).
mean, std : per-channel normalisation **in pixel units (0-255)** applied by the
    model itself: ``(255 * x - mean) / std`` for an image ``x`` in ``[0, 1]``.
    ``mean=0, std=255`` is the identity (old models); ``127.5 / 128`` is what
    ArcFace-style face models expect.

The image pipeline produces ``[0, 1]`` tensors (so caches can keep uint8 and
augmentation works on the same range); ``mean``/``std`` are applied by the
encoder, which is why an exported ONNX model includes them.

Example
-------
>>> spec = InputSpec.preset("photo", size=112)
>>> spec.channels, spec.resize, spec.polarity, spec.mean
(3, 'crop', 'none', (127.5, 127.5, 127.5))
>>> InputSpec.from_dict(InputSpec().to_dict()) == InputSpec()
True
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any

from ..errors import ConfigError

RESIZE_POLICIES = ("pad", "crop", "stretch")
POLARITIES = ("auto", "none")


@dataclass(frozen=True)
class InputSpec:
    """What a model expects as input (see the module docstring)."""

    channels: int = 1
    size: int = 32
    resize: str = "pad"
    polarity: str = "auto"
    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (255.0,)

    def __post_init__(self) -> None:
        object.__setattr__(self, "mean", _per_channel("mean", self.mean, self.channels))
        object.__setattr__(self, "std", _per_channel("std", self.std, self.channels))
        self.validate()

    def validate(self) -> None:
        """Raise :class:`ConfigError` naming the first field that is out of range."""
        if self.channels not in (1, 3):
            raise ConfigError(f"input channels must be 1 or 3, got {self.channels!r}")
        if isinstance(self.size, bool) or not isinstance(self.size, int) or self.size < 1:
            raise ConfigError(f"size must be a positive integer, got {self.size!r}")
        if self.resize not in RESIZE_POLICIES:
            raise ConfigError(f"resize must be one of {', '.join(RESIZE_POLICIES)}, got {self.resize!r}")
        if self.polarity not in POLARITIES:
            raise ConfigError(f"polarity must be one of {', '.join(POLARITIES)}, got {self.polarity!r}")
        if any(s <= 0 for s in self.std):
            raise ConfigError(f"std must be positive, got {self.std}")

    @property
    def is_identity_normalisation(self) -> bool:
        """True when ``mean``/``std`` leave a ``[0, 1]`` image as it is."""
        return all(m == 0.0 for m in self.mean) and all(s == 255.0 for s in self.std)

    def with_(self, **changes) -> InputSpec:
        """A copy with some fields changed (validated)."""
        return replace(self, **changes)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["mean"], d["std"] = list(self.mean), list(self.std)
        return d

    @classmethod
    def from_dict(cls, data: dict) -> InputSpec:
        """Build from a dict; unknown keys are ignored, missing keys take the defaults."""
        known = {k: data[k] for k in cls.__dataclass_fields__ if k in data and data[k] is not None}
        channels = int(known.get("channels", 1))
        known.setdefault("polarity", "auto" if channels == 1 else "none")
        for key in ("mean", "std"):
            if key in known:
                v = known[key]
                known[key] = tuple(float(x) for x in (v if isinstance(v, list | tuple) else [v]))
        return cls(**known)

    @classmethod
    def preset(cls, name: str, *, size: int | None = None, channels: int | None = None) -> InputSpec:
        """``handwriting`` (1 channel, pad, auto polarity, 32 px), ``photo`` (3 channels,
        centre crop, no inversion, mean/std 127.5, 112 px) or ``face`` (3 channels,
        stretch: aligned crops, mean 127.5 / std 128, 112 px)."""
        presets: dict[str, dict[str, Any]] = {
            "handwriting": dict(channels=1, size=32, resize="pad", polarity="auto", mean=(0.0,),
                                std=(255.0,)),
            "photo": dict(channels=3, size=112, resize="crop", polarity="none", mean=(127.5,),
                          std=(127.5,)),
            "face": dict(channels=3, size=112, resize="stretch", polarity="none", mean=(127.5,),
                         std=(128.0,)),
        }
        if name not in presets:
            raise ConfigError(f"unknown input preset {name!r}; choose one of {', '.join(presets)}")
        fields = dict(presets[name])
        if size is not None:
            fields["size"] = size
        if channels is not None and channels != fields["channels"]:
            fields["channels"] = channels
            if channels == 1:
                fields["mean"], fields["std"] = (fields["mean"][0],), (fields["std"][0],)
        return cls(**fields)


def _per_channel(name: str, value, channels: int) -> tuple[float, ...]:
    vals = tuple(float(v) for v in (value if isinstance(value, list | tuple) else [value]))
    if len(vals) == 1:
        return vals * channels
    if len(vals) != channels:
        raise ConfigError(f"{name} needs 1 or {channels} values (one per channel), got {len(vals)}")
    return vals
