"""Run: OMP_NUM_THREADS=1 python docs/bench/fusion_independent_paired.py CLASSES NON_MATED MODEL...
(1000 2000 -> fusion_independent_paired_1k.json; 5000 10000 -> fusion_independent_paired_5k.json).
Paired bootstrap of bench fusion's FNIR@FPIR and top-1: same searches as `megaclass bench fusion`
(classes from 100,000, per_class 3, mated seed 5, non-mated from 200,000), member statistics
calibrated on the first half of the non-mated searches as in the bench; the FPIR threshold here is
re-chosen on every bootstrap resample of ALL non-mated searches (so its own noise is included)."""
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

from megaclass.data.glyphs import GlyphSource
from megaclass.fusion import FusedRecognizer
from megaclass.models import load_encoder
from megaclass.recognizer import Recognizer

classes, non_mated, models = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3:]
per_class, fpir = 3, 0.01
ids = list(range(100_000, 100_000 + classes))
ex, ec = GlyphSource.batch(ids, per_class, seed=1)
qx, qc = GlyphSource.batch(ids, 1, seed=5, start=per_class)
truth = np.array([f"glyph-{i}" for i in qc])
nx, _ = GlyphSource.batch(list(range(200_000, 200_000 + non_mated)), 1, seed=5)
labels = [f"glyph-{i}" for i in ec[::per_class]]
out = {}
with tempfile.TemporaryDirectory() as tmp:
    recs = [Recognizer(load_encoder(m), Path(tmp) / f"m{i}") for i, m in enumerate(models)]
    vec = []
    for r in recs:
        r.enroll_many((lb, ex[k * per_class:(k + 1) * per_class]) for k, lb in enumerate(labels))
        vec.append((r.embed(qx), r.embed(nx)))
    configs = [(Path(m).name, [i]) for i, m in enumerate(models)] + [("fused", list(range(len(models))))]
    for name, idx in configs:
        ens = FusedRecognizer([recs[i] for i in idx], adopt=True)
        qv = np.concatenate([vec[i][0] for i in idx], axis=1)
        nv = np.concatenate([vec[i][1] for i in idx], axis=1)
        ens.calibrate(None, fpir, vectors=nv[:non_mated // 2], save=False)
        dq = ens.identify_vectors(qv, k=5, threshold=None)
        dn = ens.identify_vectors(nv, k=5, threshold=None)
        out[name] = (np.array([d.candidates[0].label for d in dq]) == truth,
                     np.array([d.candidates[0].score for d in dq]),
                     np.array([d.candidates[0].score for d in dn]))

def fnir(ok, s, ns):
    t = np.quantile(ns, 1 - fpir, method="higher")  # FPIR <= 1 % over these non-mated searches
    return float(np.mean(~(ok & (s > t))))

rng = np.random.default_rng(0)
names = list(out)
point = {n: {"top1": float(out[n][0].mean()), "fnir": fnir(*out[n])} for n in names}
boots = {n: [] for n in names}
top = {n: [] for n in names}
for _ in range(1000):
    qi = rng.integers(0, classes, classes)
    ni = rng.integers(0, non_mated, non_mated)
    for n in names:
        ok, s, ns = out[n]
        boots[n].append(fnir(ok[qi], s[qi], ns[ni]))
        top[n].append(ok[qi].mean())
best = min(names[:-1], key=lambda n: point[n]["fnir"])
def ci(a):
    return [float(np.quantile(a, .025)), float(np.quantile(a, .975))]
res = {"classes": classes, "non_mated": non_mated, "models": models, "point": point, "best_single_fnir": best,
       "fused_minus_member": {n: {"fnir": point["fused"]["fnir"] - point[n]["fnir"],
                                  "fnir_ci95": ci(np.array(boots["fused"]) - np.array(boots[n])),
                                  "top1": point["fused"]["top1"] - point[n]["top1"],
                                  "top1_ci95": ci(np.array(top["fused"]) - np.array(top[n]))}
                              for n in names[:-1]}}
print(json.dumps(res, indent=1))
