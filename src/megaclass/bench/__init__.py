"""Benchmarks that print side-by-side ratios and write JSON + PNG (``megaclass bench ...``)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

#: The shipped encoder of the benchmarks' default data (``bench gallery``, ``bench heads``):
#: the model their recorded numbers (README, ``docs/bench``) were measured with, so a re-run
#: reproduces them; ``--model reference`` measures with the current reference model.
BENCH_MODEL = "reference-v1"


def run_state_dir(out: str | Path, label: str, spec: dict) -> Path:
    """Where a resumable benchmark run keeps its state until it finishes:
    ``out/runs/<label>-<hash of spec>``, so a run with other settings never continues from it."""
    key = hashlib.sha1(json.dumps(spec, sort_keys=True, default=str).encode()).hexdigest()[:10]
    return Path(out) / "runs" / f"{label}-{key}"
