"""Fused ensemble vs each of its models, side by side in one run (issue 19 part 4).

Run: ``python -m megaclass.evaluate.fusion_bench OUT.json MODEL_DIR MODEL_DIR [...]``.
Every model enrolls the same glyph classes (3 drawings each, seed 1) in its own gallery;
mated queries are a 4th drawing (seed 5); non-mated glyph classes are split in two: the
first half calibrates (per-model statistics and the FPIR-1 % threshold), the second half
measures FPIR on searches the calibration never saw. Each single model is measured as a
one-member ensemble, which equals the model itself (tests/test_fusion.py).
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np

from ..data.glyphs import GlyphSource
from ..fusion import FusedRecognizer
from ..models import load_encoder
from ..recognizer import Recognizer


def _measure(name: str, ens: FusedRecognizer, q, truth, nm_cal, nm_test, fpir: float) -> dict:
    cal = ens.calibrate(nm_cal, target_fpir=fpir)
    t0 = time.perf_counter()
    tracemalloc.start()
    dec = ens.identify(q, k=5)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    ms = (time.perf_counter() - t0) * 1000 / len(q)
    top1 = float(np.mean([d.candidates[0].label == t for d, t in zip(dec, truth, strict=True)]))
    fnir = float(np.mean([d.label != t for d, t in zip(dec, truth, strict=True)]))
    held = float(np.mean([d.known for d in ens.identify(nm_test, k=1)]))
    templates = sum(len(m.gallery) * m.gallery.dim * 4 for m in ens.members)
    params = sum(sum(p.numel() for p in m.encoder.parameters()) for m in ens.members)
    return {"name": name, "top1": top1, f"fnir_at_fpir_{fpir:g}": fnir, "threshold": cal.threshold,
            "fpir_calibration": cal.achieved_fpir, "fpir_held_out": held,
            "identify_ms_per_query": ms, "identify_peak_python_mb": peak / 2**20,
            "template_bytes": templates, "encoder_params": params}


def run(models: list[str], classes: int = 500, non_mated: int = 2000, fpir: float = 0.01) -> dict:
    """Measure every model alone and all of them fused (zsum), on the same searches."""
    ids = list(range(100_000, 100_000 + classes))
    enroll = {c: GlyphSource.samples(c, 3, seed=1) for c in ids}
    q, qid = GlyphSource.batch(ids, 1, seed=5, start=3)
    truth = [f"glyph-{i}" for i in qid]
    nm, _ = GlyphSource.batch(list(range(200_000, 200_000 + non_mated)), 1, seed=5)
    nm_cal, nm_test = nm[: non_mated // 2], nm[non_mated // 2:]
    encoders = [load_encoder(m) for m in models]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        recs = [Recognizer(e, Path(tmp) / f"m{i}") for i, e in enumerate(encoders)]
        for i, r in enumerate(recs):  # each model alone: its own one-member ensemble
            solo = FusedRecognizer([r])
            for c, x in enroll.items():
                solo.enroll(f"glyph-{c}", x)
            rows.append(_measure(Path(models[i]).name, solo, q, truth, nm_cal, nm_test, fpir))
        ens = FusedRecognizer(recs, adopt=True)  # the same galleries, the same classes
        rows.append(_measure(" + ".join(Path(m).name for m in models) + " (zsum)", ens, q, truth,
                             nm_cal, nm_test, fpir))
    return {"classes": classes, "mated_searches": len(truth), "non_mated_calibration": len(nm_cal),
            "non_mated_held_out": len(nm_test), "target_fpir": fpir, "rows": rows}


if __name__ == "__main__":
    out = run(sys.argv[2:])
    Path(sys.argv[1]).write_text(json.dumps(out, indent=2))
    for r in out["rows"]:
        print(f"{r['name']:<32} top-1 {r['top1']:.2%}  FNIR@FPIR1% {r['fnir_at_fpir_0.01']:.2%}  "
              f"FPIR held-out {r['fpir_held_out']:.2%}  {r['identify_ms_per_query']:.2f} ms/query  "
              f"templates {r['template_bytes'] / 1e3:.0f} kB  params {r['encoder_params']:,}")
