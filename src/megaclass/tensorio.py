"""Reading the files megaclass writes (JSON + safetensors), with one error type.

Models, heads and checkpoints all read a JSON description and a safetensors file;
a missing, truncated or damaged file becomes :class:`ModelFormatError` naming it.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file

from .errors import ModelFormatError


def read_json(path: Path) -> dict:
    """The JSON object in ``path``; ModelFormatError if it is missing or not JSON."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ModelFormatError(f"cannot read {path}: {exc}") from exc


def read_tensors(path: Path, what: str = "tensors") -> dict[str, torch.Tensor]:
    """The tensors in a safetensors file (never unpickles); ModelFormatError if damaged."""
    try:
        return load_file(str(path))
    except Exception as exc:  # safetensors raises several types for damaged files
        raise ModelFormatError(f"cannot load {what} from {path}: {exc}") from exc
