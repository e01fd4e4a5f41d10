"""Backbones of an :class:`~megaclass.models.Encoder`: the ``--backbone`` grammar and timm.

One string names the feature extractor in front of the projection, in the spirit of
FAISS's ``index_factory``::

    resnet                                  the built-in residual CNN at its defaults
    resnet:widths=32,64,128,256;blocks=2    options separated by ';' (quote it in a shell)
    resnet:blocks=2;stem_stride=1           widths = stage channels (one stage per width,
                                            each after the first halves the resolution),
                                            blocks = residual blocks per stage, stem_stride 1|2
    timm:resnet18                           any timm architecture, built with pretrained=False

Options a string does not name keep the training run's values (``TrainConfig.widths``)
or :class:`~megaclass.models.EncoderConfig`'s defaults. Nothing is ever downloaded: a timm
backbone starts from random weights unless a local safetensors file is given
(``--backbone-weights``, see :func:`megaclass.models.finetune.load_backbone_weights`).
A timm-backed encoder saves like any other (``config.json`` names the architecture,
``model.safetensors`` holds the weights; no pickle).

timm is optional. On this project's machine it does not import: timm 1.0 imports
torchvision at import time, and no torchvision imports beside torch 2.13 here; a timm
backbone then fails with a :class:`~megaclass.errors.ConfigError` that says so.

Example
-------
>>> parse_backbone("resnet:widths=16,32;blocks=2")
{'backbone': 'resnet', 'widths': (16, 32), 'blocks': 2}
>>> parse_backbone("timm:resnet18")
{'backbone': 'timm:resnet18'}
"""

from __future__ import annotations

from torch import nn

from ..errors import ConfigError

GRAMMAR = "resnet[:widths=W1,W2,...;blocks=N;stem_stride=1|2] or timm:NAME"
_RESNET_OPTIONS = ("widths", "blocks", "stem_stride")


def parse_backbone(text: str) -> dict:
    """The :class:`~megaclass.models.EncoderConfig` fields a backbone string sets."""
    if not isinstance(text, str) or not text.strip():
        raise ConfigError(f"backbone must be a string like {GRAMMAR}, got {text!r}")
    kind, _, rest = text.strip().partition(":")
    if kind == "timm":
        name = rest.strip()
        if not name:
            raise ConfigError("backbone 'timm:' needs an architecture name, e.g. timm:resnet18")
        return {"backbone": f"timm:{name}"}
    if kind != "resnet":
        raise ConfigError(f"unknown backbone {text!r}; expected {GRAMMAR}")
    out: dict = {"backbone": "resnet"}
    for part in filter(None, (p.strip() for p in rest.split(";"))):
        key, eq, value = (s.strip() for s in part.partition("="))
        if key not in _RESNET_OPTIONS or not eq:
            raise ConfigError(f"backbone option {part!r} is not one of "
                              f"{', '.join(k + '=' for k in _RESNET_OPTIONS)} (grammar: {GRAMMAR})")
        try:
            if key == "widths":
                out["widths"] = tuple(int(v) for v in value.split(",") if v.strip())
            else:
                out[key] = int(value)
        except ValueError:
            raise ConfigError(f"backbone option {key} takes integers, got {value!r}") from None
    return out


def describe_backbone(config) -> str:
    """The backbone string that rebuilds ``config``'s architecture."""
    if config.backbone != "resnet":
        return config.backbone
    widths = ",".join(str(w) for w in config.widths)
    return f"resnet:widths={widths};blocks={config.blocks};stem_stride={config.stem_stride}"


def import_timm():
    """The timm module, or a ConfigError saying why it cannot be used here."""
    try:
        import timm
    except ImportError as exc:  # not installed, or installed without a working torchvision
        raise ConfigError(
            f"a timm backbone needs the optional timm package, which does not import here ({exc}); "
            "install it with `pip install timm` next to a torchvision that imports with this torch, "
            "or use the built-in backbone (--backbone resnet:...)"
        ) from exc
    return timm


def timm_features(name: str, in_channels: int) -> tuple[nn.Module, int]:
    """A timm model without its classifier (``num_classes=0``: pooled ``(N, F)`` features),
    built from random weights (``pretrained=False``: nothing is downloaded), and ``F``."""
    timm = import_timm()
    is_model = getattr(timm, "is_model", None)
    if is_model is not None and not is_model(name):
        raise ConfigError(f"timm has no architecture {name!r} (see timm.list_models())")
    model = timm.create_model(name, pretrained=False, num_classes=0, in_chans=in_channels)
    features = int(getattr(model, "num_features", 0))
    if features < 1:
        raise ConfigError(f"timm model {name!r} does not report num_features; it cannot be a backbone")
    return model, features
