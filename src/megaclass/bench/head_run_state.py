"""Resumable head-training runs: a long run of :func:`~.heads_accuracy.train_worker` that is
cut short (a session's end, a timeout) continues from its last evaluation instead of
starting again.

At every evaluation the worker writes the head's state, the optimizer's state and both
random generators to ``state-<step>.safetensors`` and the loop's counters, its curve and
its spec to ``progress.json`` (written to a temporary name and renamed, after the tensors,
so ``progress.json`` always names a complete tensor file). No pickle. A folder holding a
run with another spec is refused rather than silently mixed.

Example
-------
>>> import tempfile, torch
>>> head, opt = torch.nn.Linear(3, 2), None
>>> with tempfile.TemporaryDirectory() as d:
...     save_run(d, {"head": "x"}, head, opt, {"step": 5, "curve": []}, np_state={"s": 1})
...     loop = load_run(d, {"head": "x"}, head, opt)
>>> loop["step"], loop["np_state"]
(5, {'s': 1})
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors.torch import save_file

from ..errors import ConfigError
from ..tensorio import read_json, read_tensors
from ..train.checkpoint import flatten_optimizer, unflatten_optimizer

PROGRESS = "progress.json"


def save_run(folder, spec: dict, head: torch.nn.Module, opt: torch.optim.Optimizer | None,
             loop: dict, *, np_state: dict) -> None:
    """Write the run's state after ``loop["step"]`` steps; older tensor files are removed."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {f"head.{k}": v.detach().cpu().contiguous().clone() for k, v in head.state_dict().items()}
    meta = None
    if opt is not None:
        flat, meta = flatten_optimizer(opt.state_dict())
        tensors.update({f"opt.{k}": v for k, v in flat.items()})
    tensors["torch_rng"] = torch.get_rng_state()
    name = f"state-{int(loop['step']):08d}.safetensors"
    save_file(tensors, str(folder / name))
    tmp = folder / f".{PROGRESS}.tmp"
    tmp.write_text(json.dumps({"spec": spec, "loop": loop, "np_state": np_state,
                               "optimizer": meta, "tensors": name}))
    os.replace(tmp, folder / PROGRESS)
    for old in folder.glob("state-*.safetensors"):
        if old.name != name:
            old.unlink(missing_ok=True)


def load_run(folder, spec: dict, head: torch.nn.Module, opt: torch.optim.Optimizer | None) -> dict | None:
    """Restore ``head``, ``opt`` and torch's generator from ``folder``; return the loop state
    (with ``np_state``), or None when the folder holds no run yet."""
    folder = Path(folder)
    if not (folder / PROGRESS).is_file():
        return None
    saved = read_json(folder / PROGRESS)
    if saved.get("spec") != spec:
        raise ConfigError(f"{folder} holds a run with another setting; remove it or use another folder "
                          f"(saved {saved.get('spec')}, asked {spec})")
    tensors = read_tensors(folder / saved["tensors"], "run state")
    head.load_state_dict({k[5:]: v for k, v in tensors.items() if k.startswith("head.")})
    if opt is not None:
        flat = {k[4:]: v for k, v in tensors.items() if k.startswith("opt.")}
        opt.load_state_dict(unflatten_optimizer(flat, saved["optimizer"]))
    torch.set_rng_state(tensors["torch_rng"])
    return {**saved["loop"], "np_state": saved["np_state"]}
