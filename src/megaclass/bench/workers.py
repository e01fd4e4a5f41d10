"""Measurement subprocesses: each benchmark measurement runs in a fresh Python process, so
its peak memory (``VmHWM``) is its own, and reports one JSON line on stdout.

Example
-------
>>> out = spawn_worker("megaclass.bench.no_such_module", {}, timeout=60)
>>> out["error"].startswith("worker failed (exit 1)")
True
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable


def spawn_worker(module: str, spec: dict, timeout: float) -> dict:
    """Run ``python -m module '<json spec>'``; its last JSON line, or ``{"error": ...}``."""
    cmd = [sys.executable, "-m", module, json.dumps(spec)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                              env={**os.environ, "PYTHONUNBUFFERED": "1"})
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        return {"error": f"worker failed (exit {proc.returncode}): {tail}"}
    return json.loads(lines[-1])


def worker_main(run: Callable[[dict], dict], argv: list[str] | None = None) -> None:
    """A worker's entry point: parse the JSON spec, set torch's threads, print ``run(spec)``
    as one JSON line (a megaclass or memory error becomes ``{"error": ...}``)."""
    spec = json.loads((argv or sys.argv[1:])[0])
    import torch

    from ..errors import MegaclassError

    torch.set_num_threads(int(spec.get("threads", 1)))
    try:
        result = run(spec)
    except (MegaclassError, MemoryError) as exc:
        result = {"error": f"{type(exc).__name__}: {exc}"}
    print(json.dumps(result), flush=True)
