"""Where training runs: ``--device auto`` picks CUDA when torch sees a GPU, else the CPU."""

from __future__ import annotations

import torch

from ..errors import ConfigError


def resolve_device(name: str) -> torch.device:
    """The training device: ``"auto"`` is CUDA when available, else CPU; any other name is
    checked (``"cuda"`` without a GPU -> ConfigError naming what this machine has)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise ConfigError(f"unknown device {name!r}: use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {name!r} asked for, but torch sees no CUDA GPU here: "
                          "use --device cpu or auto")
    if device.type not in ("cpu", "cuda"):
        raise ConfigError(f"device {name!r} is not supported for training: use auto, cpu, cuda or cuda:N")
    return device
