"""Training checkpoints without pickle: safetensors for tensors, JSON for the rest.

A checkpoint directory holds the encoder (``encoder/``), the head (``head/``),
the optimizer state flattened to ``optimizer.safetensors`` + ``state.json``
(step, epoch, config, non-tensor optimizer values, RNG state). Written to a
temporary directory and renamed into place, so a crash never leaves a
half-written checkpoint as the latest one.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from ..errors import ConfigError
from ..heads import Head, load_head
from ..models import Encoder
from ..tensorio import read_json, read_tensors

LATEST = "latest"


def flatten_optimizer(state: dict) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """An optimizer's ``state_dict`` as ``(tensors by "<param>.<key>", JSON-able rest)``."""
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, Any] = {}
    for pid, pstate in state["state"].items():
        for key, value in pstate.items():
            name = f"{pid}.{key}"
            if torch.is_tensor(value):
                tensors[name] = value.detach().cpu().contiguous()
            else:
                scalars[name] = value
    return tensors, {"scalars": scalars, "param_groups": state["param_groups"]}


def unflatten_optimizer(tensors: dict[str, torch.Tensor], meta: dict) -> dict:
    """The ``state_dict`` :func:`flatten_optimizer` took apart."""
    state: dict[int, dict[str, Any]] = {}
    for name, value in list(tensors.items()) + list(meta["scalars"].items()):
        pid, key = name.split(".", 1)
        state.setdefault(int(pid), {})[key] = value
    return {"state": state, "param_groups": meta["param_groups"]}


def save_checkpoint(root: str | Path, *, encoder: Encoder, head: Head,
                    optimizer: torch.optim.Optimizer, info: dict) -> Path:
    """Write checkpoint ``step-<n>`` under ``root`` and point ``root/latest`` at it."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    name = f"step-{info['step']:08d}"
    tmp = root / f".{name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    encoder.save(tmp / "encoder")
    head.save(tmp / "head")
    tensors, meta = flatten_optimizer(optimizer.state_dict())
    tensors["__rng__"] = torch.get_rng_state()
    save_file(tensors, str(tmp / "optimizer.safetensors"))
    (tmp / "state.json").write_text(json.dumps({**info, "optimizer": meta}, indent=1))
    final = root / name
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)
    pointer = root / f".{LATEST}.tmp"
    pointer.write_text(name)
    pointer.replace(root / LATEST)
    return final


def latest_checkpoint(root: str | Path) -> Path | None:
    """The newest complete checkpoint under ``root``, or None."""
    pointer = Path(root) / LATEST
    if not pointer.is_file():
        return None
    path = Path(root) / pointer.read_text().strip()
    return path if (path / "state.json").is_file() else None


def load_checkpoint(path: str | Path) -> tuple[Encoder, Head, dict, dict]:
    """Return ``(encoder, head, optimizer_state_dict, info)`` from a checkpoint directory."""
    path = Path(path)
    opt_state, info = load_state(path)
    world = int(info.get("world_size", 1))
    if world != 1:
        raise ConfigError(f"checkpoint {path} was written by {world} processes: resume it with "
                          f"--nproc {world}, or run `megaclass reshard {path} --world 1` first")
    return Encoder.load(path / "encoder"), load_head(path / "head"), opt_state, info


def load_state(path: str | Path) -> tuple[dict, dict]:
    """``(optimizer_state_dict, info)`` of a checkpoint; ``info["rng_state"]`` when saved."""
    path = Path(path)
    info = read_json(path / "state.json")
    tensors = read_tensors(path / "optimizer.safetensors")
    rng = tensors.pop("__rng__", None)
    if rng is not None:
        info["rng_state"] = rng
    return unflatten_optimizer(tensors, info.pop("optimizer")), info
