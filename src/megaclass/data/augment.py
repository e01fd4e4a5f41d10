"""Seeded, batch-wise data augmentation for training (built on ``kornia.augmentation``).

Augmentation runs on the **batch** the trainer is about to feed the encoder: float
tensors ``(N, C, size, size)`` in ``[0, 1]`` with ``C`` = 1 or 3 (the model's input
contract, :class:`~megaclass.data.input_spec.InputSpec`; mean/std are applied later,
inside the model). Every step draws its own parameters per sample, so one call
augments a whole batch; the output has the input's shape, dtype and device and stays
in ``[0, 1]``.

Presets
-------
``none``         no augmentation (:func:`build_augment` returns ``None``).
``default``      general-purpose photos: mild random resized crop, horizontal flip,
                 small affine, colour jitter, occasional blur and random erasing.
``handwriting``  drawings and glyphs: small affine (rotation, shear, scale, shift)
                 and a mild elastic warp; **never flips** (a mirrored letter is another
                 letter), no colour jitter.
``faces``        aligned face crops: flip, mild crop, colour jitter, rotation of a few
                 degrees at most, occasional blur and small erasing.

Grammar of a custom pipeline
----------------------------
A pipeline is a JSON list of steps applied in order, each an object with ``"op"``
and optional parameters (omitted ones take the defaults below); ``{"steps": [...]}``
and a single step object are accepted too. Every step takes ``p``, the probability
that it is applied to a given sample. Ranges are ``[low, high]``; fractions are of
the image side.

======== ======================================================= ======================
op       parameters (defaults)                                   kornia class
======== ======================================================= ======================
crop     ``scale`` [0.8, 1.0] area kept, ``ratio`` [0.9, 1.1]    RandomResizedCrop
         aspect ratio, ``p`` 1.0; resized back to ``size``
flip     ``p`` 0.5 (horizontal mirror)                           RandomHorizontalFlip
affine   ``degrees`` 10, ``translate`` 0.05, ``scale``           RandomAffine
         [0.95, 1.05], ``shear`` 0 (degrees, both axes),
         ``padding`` "zeros" | "border" | "reflection", ``p`` 0.5
elastic  ``magnitude`` 0.03 (typical displacement, fraction      RandomElasticTransform
         of the side), ``smoothness`` 0.125 (Gaussian sigma
         of the displacement field, fraction of the side),
         ``p`` 0.3
jitter   ``brightness`` 0.2, ``contrast`` 0.2, ``saturation``    ColorJiggle
         0.2, ``hue`` 0.0, ``p`` 0.5; on 1-channel input only
         brightness and contrast apply (saturation and hue
         are ignored). Hue is off unless asked for: its
         RGB-HSV round trip made the step ~3x slower
         (measured 196 vs 70 ms per 64 x 3 x 112 x 112
         batch, one thread)
blur     ``sigma`` [0.1, 1.0] pixels, ``kernel`` (odd; default   RandomGaussianBlur
         2*ceil(2*sigma_high)+1), ``p`` 0.2
erase    ``scale`` [0.02, 0.12] area, ``ratio`` [0.3, 3.3],      RandomErasing
         ``value`` 0.0, ``p`` 0.25
======== ======================================================= ======================

An unknown op or parameter, or a value out of range, raises
:class:`~megaclass.errors.ConfigError` naming it.

Determinism
-----------
kornia draws parameters from torch's global generator. :class:`Augment` runs each
call inside ``torch.random.fork_rng`` seeded from ``(seed, step)``, so the same seed
and step give the same augmented batch, a resumed run augments exactly as the
uninterrupted one would, and the caller's random stream is left untouched.

Example
-------
>>> import torch
>>> aug = build_augment("handwriting", channels=1, size=32, seed=0)
>>> x = torch.rand(8, 1, 32, 32)
>>> y = aug(x, step=3)
>>> y.shape, y.dtype, bool(y.min() >= 0 and y.max() <= 1)
(torch.Size([8, 1, 32, 32]), torch.float32, True)
>>> torch.equal(y, aug(x, step=3))
True
>>> build_augment([{"op": "flip", "p": 1.0}], channels=1, size=32, seed=0).names
['flip']
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import ConfigError, InvalidInputError

__all__ = ["PRESETS", "OPS", "Augment", "build_augment", "parse_augment", "augment_name"]

#: Every op's parameters and their defaults (the grammar in the module docstring).
OPS: dict[str, dict[str, Any]] = {
    "crop": {"scale": [0.8, 1.0], "ratio": [0.9, 1.1], "p": 1.0},
    "flip": {"p": 0.5},
    "affine": {"degrees": 10.0, "translate": 0.05, "scale": [0.95, 1.05], "shear": 0.0,
               "padding": "zeros", "p": 0.5},
    "elastic": {"magnitude": 0.03, "smoothness": 0.125, "p": 0.3},
    "jitter": {"brightness": 0.2, "contrast": 0.2, "saturation": 0.2, "hue": 0.0, "p": 0.5},
    "blur": {"sigma": [0.1, 1.0], "kernel": None, "p": 0.2},
    "erase": {"scale": [0.02, 0.12], "ratio": [0.3, 3.3], "value": 0.0, "p": 0.25},
}

#: Named pipelines (``none`` is the empty one).
PRESETS: dict[str, list[dict[str, Any]]] = {
    "none": [],
    "default": [
        {"op": "crop", "scale": [0.7, 1.0], "ratio": [0.8, 1.25], "p": 0.5},
        {"op": "flip", "p": 0.5},
        {"op": "affine", "degrees": 10, "translate": 0.05, "scale": [0.95, 1.05], "p": 0.3},
        {"op": "jitter", "brightness": 0.2, "contrast": 0.2, "saturation": 0.2, "p": 0.5},
        {"op": "blur", "sigma": [0.1, 1.0], "p": 0.1},
        {"op": "erase", "scale": [0.02, 0.12], "p": 0.2},
    ],
    "handwriting": [
        {"op": "affine", "degrees": 8, "translate": 0.06, "scale": [0.9, 1.1], "shear": 8, "p": 0.7},
        {"op": "elastic", "magnitude": 0.02, "smoothness": 0.125, "p": 0.3},
        {"op": "blur", "sigma": [0.1, 0.6], "p": 0.1},
    ],
    "faces": [
        {"op": "crop", "scale": [0.85, 1.0], "ratio": [0.9, 1.1], "p": 0.5},
        {"op": "flip", "p": 0.5},
        {"op": "affine", "degrees": 4, "translate": 0.03, "scale": [0.97, 1.03], "p": 0.3},
        {"op": "jitter", "brightness": 0.3, "contrast": 0.3, "saturation": 0.2, "p": 0.8},
        {"op": "blur", "sigma": [0.1, 1.2], "p": 0.1},
        {"op": "erase", "scale": [0.02, 0.1], "p": 0.1},
    ],
}

_PADDINGS = ("zeros", "border", "reflection")


# --------------------------------------------------------------------------- parsing
def _load(spec: str | list | dict) -> tuple[str, list]:
    """``spec`` -> (name, raw list of steps): preset name, JSON text, JSON file or object."""
    if isinstance(spec, dict):
        return "custom", _steps_of(spec)
    if isinstance(spec, list | tuple):
        return "custom", list(spec)
    if not isinstance(spec, str):
        raise ConfigError(f"augment must be a preset name, a JSON pipeline or a path, "
                          f"got {type(spec).__name__}")
    text = spec.strip()
    if text.lower() in PRESETS:
        return text.lower(), PRESETS[text.lower()]
    if text[:1] in "[{":
        source = "JSON"
    else:
        path = Path(text).expanduser()
        if not path.is_file():
            raise ConfigError(
                f"unknown augmentation {spec!r}: not a preset ({', '.join(PRESETS)}), "
                "not a JSON pipeline and not an existing .json file"
            )
        source, text = str(path), path.read_text()
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"augmentation pipeline in {source} is not valid JSON: {exc}") from None
    return "custom", _steps_of(data)


def _steps_of(data: Any) -> list:
    if isinstance(data, dict):
        if "op" in data:
            return [data]
        if set(data) == {"steps"} and isinstance(data["steps"], list):
            return data["steps"]
        raise ConfigError('an augmentation object needs "op" (one step) or only "steps" (a list of steps)')
    if isinstance(data, list):
        return data
    raise ConfigError(f"an augmentation pipeline is a list of steps, got {type(data).__name__}")


def _range(op: str, key: str, value: Any, lo: float, hi: float) -> list[float]:
    if not (isinstance(value, list | tuple) and len(value) == 2
            and all(isinstance(v, int | float) and not isinstance(v, bool) for v in value)):
        raise ConfigError(f"augment op {op!r}: {key} must be a [low, high] pair of numbers, got {value!r}")
    a, b = float(value[0]), float(value[1])
    if not (lo <= a <= b <= hi):
        raise ConfigError(f"augment op {op!r}: {key} must satisfy {lo} <= low <= high <= {hi}, got {value!r}")
    return [a, b]


def _number(op: str, key: str, value: Any, lo: float, hi: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not lo <= value <= hi:
        raise ConfigError(f"augment op {op!r}: {key} must be a number in [{lo}, {hi}], got {value!r}")
    return float(value)


def _check_step(index: int, step: Any) -> dict[str, Any]:
    """One raw step -> a complete, validated step (defaults filled in)."""
    if not isinstance(step, dict):
        raise ConfigError(f"augment step {index} must be an object with an \"op\", got {step!r}")
    op = step.get("op")
    if op not in OPS:
        raise ConfigError(f"unknown augment op {op!r} (step {index}); choose one of {', '.join(OPS)}")
    unknown = sorted(set(step) - set(OPS[op]) - {"op"})
    if unknown:
        raise ConfigError(f"unknown parameter(s) for augment op {op!r}: {', '.join(unknown)}; "
                          f"it takes {', '.join(OPS[op])}")
    s = {"op": op, **OPS[op], **{k: v for k, v in step.items() if k != "op"}}
    s["p"] = _number(op, "p", s["p"], 0.0, 1.0)
    if op == "crop":
        s["scale"] = _range(op, "scale", s["scale"], 1e-3, 1.0)
        s["ratio"] = _range(op, "ratio", s["ratio"], 1e-2, 100.0)
    elif op == "affine":
        s["degrees"] = _number(op, "degrees", s["degrees"], 0.0, 180.0)
        s["translate"] = _number(op, "translate", s["translate"], 0.0, 0.5)
        s["scale"] = _range(op, "scale", s["scale"], 0.1, 10.0)
        s["shear"] = _number(op, "shear", s["shear"], 0.0, 60.0)
        if s["padding"] not in _PADDINGS:
            raise ConfigError(f"augment op 'affine': padding must be one of {', '.join(_PADDINGS)}, "
                              f"got {s['padding']!r}")
    elif op == "elastic":
        s["magnitude"] = _number(op, "magnitude", s["magnitude"], 0.0, 0.5)
        s["smoothness"] = _number(op, "smoothness", s["smoothness"], 0.01, 1.0)
    elif op == "jitter":
        for key in ("brightness", "contrast", "saturation"):
            s[key] = _number(op, key, s[key], 0.0, 1.0)
        s["hue"] = _number(op, "hue", s["hue"], 0.0, 0.5)
    elif op == "blur":
        s["sigma"] = _range(op, "sigma", s["sigma"], 1e-3, 50.0)
        if s["kernel"] is not None and (isinstance(s["kernel"], bool) or not isinstance(s["kernel"], int)
                                        or s["kernel"] < 3 or s["kernel"] % 2 == 0):
            raise ConfigError(f"augment op 'blur': kernel must be an odd integer >= 3, got {s['kernel']!r}")
    elif op == "erase":
        s["scale"] = _range(op, "scale", s["scale"], 1e-4, 1.0)
        s["ratio"] = _range(op, "ratio", s["ratio"], 1e-2, 100.0)
        s["value"] = _number(op, "value", s["value"], 0.0, 1.0)
    return s


def parse_augment(spec: str | list | dict | None) -> tuple[str, list[dict[str, Any]]]:
    """Validate ``spec`` without building anything: ``(name, complete steps)``.

    ``name`` is the preset's name, ``"custom"`` for a JSON pipeline, or ``"none"``.
    Raises :class:`ConfigError` naming an unknown preset, op or parameter.
    """
    if spec is None:
        return "none", []
    name, raw = _load(spec)
    return name, [_check_step(i, step) for i, step in enumerate(raw)]


def augment_name(spec: str | list | dict | None) -> str | list | dict | None:
    """What to record for ``spec`` (e.g. in a model's ``trained_with``): a preset name as is,
    a file's or JSON text's parsed steps, ``None`` for no augmentation."""
    name, steps = parse_augment(spec)
    if name == "none":
        return None
    return name if name != "custom" else steps


# --------------------------------------------------------------------------- building
def _module(step: dict[str, Any], channels: int, size: int):
    import kornia.augmentation as K

    op, p = step["op"], step["p"]
    if op == "crop":
        return K.RandomResizedCrop((size, size), scale=tuple(step["scale"]), ratio=tuple(step["ratio"]), p=p,
                                   cropping_mode="resample")  # one batched warp, not a loop over samples
    if op == "flip":
        return K.RandomHorizontalFlip(p=p)
    if op == "affine":
        shear = step["shear"]
        return K.RandomAffine(degrees=step["degrees"], translate=(step["translate"],) * 2,
                              scale=tuple(step["scale"]),
                              # x and y ranges: kornia accepts (and documents) 4 values, its hint says 2
                              shear=(-shear, shear, -shear, shear) if shear else None,  # type: ignore[arg-type]
                              padding_mode=step["padding"], p=p)
    if op == "elastic":
        # kornia smooths uniform [-1, 1] noise with a normalised Gaussian (sigma s pixels) and
        # scales it by alpha in normalised coordinates (the side spans 2). The smoothed noise has
        # std ~ (1/sqrt(3)) / (2 sqrt(pi) s), so a typical displacement of magnitude*size pixels
        # needs alpha = magnitude * 2 * 2 sqrt(pi) s * sqrt(3) ~= 12.3 * magnitude * s.
        sigma = max(1.0, step["smoothness"] * size)
        kernel = min(2 * int(math.ceil(2 * sigma)) + 1, size + 1 - size % 2)
        alpha = 4.0 * math.sqrt(3.0 * math.pi) * step["magnitude"] * sigma
        return K.RandomElasticTransform(kernel_size=(kernel, kernel), sigma=(sigma, sigma),
                                        alpha=(alpha, alpha), p=p)
    if op == "jitter":
        colour = channels == 3
        return K.ColorJiggle(brightness=step["brightness"], contrast=step["contrast"],
                             saturation=step["saturation"] if colour else 0.0,
                             hue=step["hue"] if colour else 0.0, p=p)
    if op == "blur":
        hi = step["sigma"][1]
        kernel = step["kernel"] or 2 * int(math.ceil(2 * hi)) + 1
        return K.RandomGaussianBlur((kernel, kernel), sigma=tuple(step["sigma"]), p=p)
    if op == "erase":
        return K.RandomErasing(scale=tuple(step["scale"]), ratio=tuple(step["ratio"]),
                               value=step["value"], p=p)
    raise ConfigError(f"unknown augment op {op!r}")  # unreachable: parse_augment checked it


class Augment:
    """A seeded pipeline of batch augmentations (see the module docstring for the grammar).

    Parameters
    ----------
    steps : complete, validated steps (from :func:`parse_augment`).
    channels, size : the batches it will see, ``(N, channels, size, size)``.
    seed : the random stream; with ``step=`` each call is a pure function of
        ``(seed, step, batch)``.
    name : the preset's name or ``"custom"`` (recorded with trained models).
    threads : torch intra-op threads while augmenting (restored afterwards). kornia
        runs many small ops; on this 2-core box, shared with other jobs, one thread
        was 3-4x faster than two (handwriting preset, 256 x 1 x 32 x 32: 67 vs 193 ms;
        faces, 64 x 3 x 112 x 112: 350 vs 984 ms). ``None`` keeps torch's setting.

    Attributes
    ----------
    steps : the complete steps (every parameter spelled out), JSON-able.
    names : the op of each step.

    Example
    -------
    >>> import torch
    >>> aug = Augment(parse_augment("faces")[1], channels=3, size=16, seed=1)
    >>> aug(torch.rand(4, 3, 16, 16), step=0).shape
    torch.Size([4, 3, 16, 16])
    """

    def __init__(self, steps: list[dict[str, Any]], *, channels: int, size: int, seed: int = 0,
                 name: str = "custom", threads: int | None = 1) -> None:
        if channels not in (1, 3):
            raise ConfigError(f"augmentation needs 1 or 3 channels, got {channels!r}")
        if isinstance(size, bool) or not isinstance(size, int) or size < 4:
            raise ConfigError(f"augmentation needs an integer image size >= 4, got {size!r}")
        self.steps = steps
        self.channels, self.size, self.seed, self.name = channels, size, int(seed), name
        self.threads = threads
        self._modules = [_module(s, channels, size) for s in steps]
        self._calls = 0

    @property
    def names(self) -> list[str]:
        return [s["op"] for s in self.steps]

    def describe(self) -> dict[str, Any]:
        """JSON-able record: name, seed and complete steps."""
        return {"name": self.name, "seed": self.seed, "steps": self.steps}

    def __repr__(self) -> str:
        return f"Augment({self.name!r}, ops={self.names}, channels={self.channels}, size={self.size})"

    def __call__(self, images: torch.Tensor, *, step: int | None = None) -> torch.Tensor:
        """Augment a batch ``(N, C, size, size)`` (or one image ``(C, size, size)``) in ``[0, 1]``.

        ``step`` picks the random draw (training passes the optimiser step); without it,
        successive calls continue one stream. Returns a new tensor of the same shape,
        dtype and device, clamped to ``[0, 1]``.
        """
        if not isinstance(images, torch.Tensor) or not images.is_floating_point():
            raise InvalidInputError("augmentation needs a floating-point image tensor in [0, 1]")
        single = images.ndim == 3
        x = images.unsqueeze(0) if single else images
        if x.ndim != 4 or x.shape[1] != self.channels or tuple(x.shape[-2:]) != (self.size, self.size):
            raise InvalidInputError(
                f"augmentation built for (N, {self.channels}, {self.size}, {self.size}) batches "
                f"got shape {tuple(images.shape)}"
            )
        if step is None:
            step, self._calls = self._calls, self._calls + 1
        if not self._modules or len(x) == 0:
            return images.clone()
        dtype = x.dtype
        work = x.float() if dtype in (torch.float16, torch.bfloat16) else x
        seed = int(np.random.SeedSequence([self.seed, int(step)]).generate_state(1)[0])
        devices = [x.device] if x.device.type == "cuda" else []
        threads = torch.get_num_threads()
        with torch.random.fork_rng(devices=devices), torch.no_grad():
            torch.manual_seed(seed)
            if self.threads:
                torch.set_num_threads(self.threads)
            try:
                for module in self._modules:
                    work = module(work)
            finally:
                torch.set_num_threads(threads)
        out = work.clamp(0.0, 1.0).to(dtype)  # never in place: a skipped step returns its input
        return out[0] if single else out


def build_augment(spec: str | list | dict | None, *, channels: int, size: int,
                  seed: int = 0) -> Augment | None:
    """The pipeline ``spec`` names, or ``None`` for no augmentation.

    ``spec``: a preset name (``none``, ``default``, ``handwriting``, ``faces``), a JSON
    pipeline (text, list or dict, see the module docstring), or a path to a JSON file.
    ``None``, ``"none"`` and an empty list give ``None``.
    """
    name, steps = parse_augment(spec)
    if not steps:
        return None
    return Augment(steps, channels=channels, size=size, seed=seed, name=name)
