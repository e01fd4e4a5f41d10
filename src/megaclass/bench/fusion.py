"""Fused ensemble vs each of its models, side by side in one run (issue 19 part 4).

``megaclass bench fusion -m a/ -m b/ [-m c/] --out DIR`` (or ``python -m megaclass.bench.fusion``
with the same options). Every model enrolls the same unseen glyph classes (ids from 100,000:
no model trained on them), ``--per-class`` drawings each (seed 1), in its own gallery; mated
searches are one more drawing per class (seed 5); non-mated glyph classes (ids from 200,000)
are split in two: the first half calibrates (each model's score statistics and the threshold
for ``--fpir``), the second half measures FPIR on searches the calibration never saw. Each
model alone is measured as a one-member ensemble, which equals the model itself
(tests/test_fusion.py), so every row goes through the same code.

Accuracy uses embeddings computed once per model; latency is measured on raw images
(embedding included) in rounds that visit every configuration in turn, so load that comes
and goes on a shared machine falls on all of them alike; the medians are reported, with the
ratio to the best single model. Memory is what a configuration keeps resident for
identification: encoder parameters plus templates (float32).
"""

from __future__ import annotations

import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import numpy as np
import typer

from ..data.glyphs import GlyphSource
from ..errors import ConfigError
from ..fusion import FusedRecognizer
from ..models import Encoder, load_encoder
from ..recognizer import Recognizer

if TYPE_CHECKING:
    from ..models import OnnxEncoder


def _accuracy(ens: FusedRecognizer, q, truth, nm_cal, nm_test, fpir: float) -> dict:
    cal = ens.calibrate(None, fpir, vectors=nm_cal, save=False)
    dec = ens.identify_vectors(q, k=5)
    top1 = float(np.mean([bool(d.candidates) and d.candidates[0].label == t
                          for d, t in zip(dec, truth, strict=True)]))
    top5 = float(np.mean([t in [c.label for c in d.candidates] for d, t in zip(dec, truth, strict=True)]))
    fnir = float(np.mean([d.label != t for d, t in zip(dec, truth, strict=True)]))
    held = float(np.mean([d.known for d in ens.identify_vectors(nm_test, k=1)]))
    return {"top1": top1, "top5": top5, "fnir": fnir, "threshold": cal.threshold,
            "fpir_calibration": cal.achieved_fpir, "fpir_held_out": held}


def _memory(ens: FusedRecognizer) -> dict:
    params = sum(int(sum(p.numel() for p in _torch_encoder(m.encoder).parameters())) for m in ens.members)
    templates = sum(m.gallery.num_templates * m.gallery.dim * 4 for m in ens.members)
    return {"encoder_params": params, "encoder_bytes": params * 4, "template_bytes": templates,
            "resident_bytes": params * 4 + templates}


def _torch_encoder(encoder: Encoder | OnnxEncoder) -> Encoder:
    """The encoder, when it is a megaclass (torch) model: its parameters are what it keeps
    resident; an imported ONNX encoder's are not known here (ConfigError)."""
    if not isinstance(encoder, Encoder):
        raise ConfigError("bench fusion measures megaclass models (an imported ONNX encoder's resident "
                          f"memory is not known here): {type(encoder).__name__} given")
    return encoder


def run(models: list[str], *, classes: int = 2000, per_class: int = 3, non_mated: int = 4000,
        fpir: float = 0.01, latency_queries: int = 200, rounds: int = 5, log=print) -> dict:
    """Measure every model alone and all of them fused (zsum), on the same searches."""
    if len(models) < 2:
        raise ConfigError("bench fusion compares an ensemble with its models: give 2 or more -m, "
                          f"got {len(models)}")
    ids = list(range(100_000, 100_000 + classes))
    enroll_x, enroll_c = GlyphSource.batch(ids, per_class, seed=1)
    q_x, q_c = GlyphSource.batch(ids, 1, seed=5, start=per_class)
    truth = [f"glyph-{i}" for i in q_c]
    nm_x, _ = GlyphSource.batch(list(range(200_000, 200_000 + non_mated)), 1, seed=5)
    labels = [f"glyph-{i}" for i in enroll_c[::per_class]]
    encoders = [_torch_encoder(load_encoder(m)) for m in models]  # refused before any work
    names = [Path(str(m)).name or str(m) for m in models]
    if len(set(names)) < len(names):  # demo/model and demo_hw/model: name them by their folder too
        names = [f"{Path(str(m)).parent.name}/{Path(str(m)).name}" for m in models]
    rows, configs = [], []
    with tempfile.TemporaryDirectory() as tmp:
        recs = [Recognizer(e, Path(tmp) / f"m{i}") for i, e in enumerate(encoders)]
        vec = []
        for name, r in zip(names, recs, strict=True):
            t0 = time.perf_counter()
            r.enroll_many((lb, enroll_x[k * per_class:(k + 1) * per_class])
                          for k, lb in enumerate(labels))
            vec.append((r.embed(q_x), r.embed(nm_x)))
            log(f"{name}: enrolled {classes:,} classes and embedded the searches in "
                f"{time.perf_counter() - t0:.0f} s")
        half = non_mated // 2
        for i, r in enumerate(recs):  # each model alone: its own one-member ensemble
            configs.append((names[i], FusedRecognizer([r], adopt=True), [i]))
        configs.append((" + ".join(names) + " (zsum)", FusedRecognizer(recs, adopt=True),
                        list(range(len(recs)))))
        for name, ens, idx in configs:
            qv = np.concatenate([vec[i][0] for i in idx], axis=1)
            nv = np.concatenate([vec[i][1] for i in idx], axis=1)
            rows.append({"name": name, "members": len(idx),
                         **_accuracy(ens, qv, truth, nv[:half], nv[half:], fpir), **_memory(ens)})
            log(f"{name}: top-1 {rows[-1]['top1']:.2%}, FNIR@FPIR{fpir:g} {rows[-1]['fnir']:.2%}")
        lat_q = q_x[:latency_queries]
        batch_ms: list[list[float]] = [[] for _ in configs]
        single_ms: list[list[float]] = [[] for _ in configs]
        for _ in range(rounds):  # interleaved: every configuration once per round
            for j, (_, ens, _) in enumerate(configs):
                t0 = time.perf_counter()
                ens.identify(lat_q, k=5)
                batch_ms[j].append((time.perf_counter() - t0) * 1000 / len(lat_q))
                t0 = time.perf_counter()
                for x in lat_q[:20]:
                    ens.identify(x[None], k=5)
                single_ms[j].append((time.perf_counter() - t0) * 1000 / 20)
    best = min(range(len(encoders)), key=lambda i: rows[i]["fnir"])
    for j, row in enumerate(rows):
        row["identify_ms_per_query_batch"] = statistics.median(batch_ms[j])
        row["identify_ms_single_query"] = statistics.median(single_ms[j])
        row["latency_ratio_to_best_single"] = (row["identify_ms_single_query"]
                                               / statistics.median(single_ms[best]))
        row["memory_ratio_to_best_single"] = row["resident_bytes"] / rows[best]["resident_bytes"]
    return {"models": [str(m) for m in models], "classes": classes, "per_class": per_class,
            "mated_searches": len(truth), "non_mated_calibration": half,
            "non_mated_held_out": non_mated - half, "target_fpir": fpir,
            "latency": {"rounds": rounds, "batch_queries": len(lat_q), "single_queries": 20,
                        "note": "medians over interleaved rounds; embedding included"},
            "best_single": rows[best]["name"], "rows": rows}


def format_rows(result: dict) -> str:
    """A text table of :func:`run`'s rows (what the command prints)."""
    f = result["target_fpir"]
    lines = [f"{'models':<40} {'top-1':>7} {f'FNIR@FPIR{f:g}':>13} {'FPIR held':>9} "
             f"{'ms/query':>9} {'x best':>7} {'memory':>9} {'x best':>7}"]
    for r in result["rows"]:
        lines.append(f"{r['name']:<40} {r['top1']:>7.2%} {r['fnir']:>13.2%} {r['fpir_held_out']:>9.2%} "
                     f"{r['identify_ms_single_query']:>9.2f} {r['latency_ratio_to_best_single']:>6.2f}x "
                     f"{r['resident_bytes'] / 2**20:>7.2f}MB {r['memory_ratio_to_best_single']:>6.2f}x")
    return "\n".join(lines)


ModelsOpt = Annotated[list[Path], typer.Option("--model", "-m", help="A model directory; give 2 or more.")]


def fusion(model: ModelsOpt,
           out: Annotated[Path, typer.Option(help="Folder for fusion.json.")] = Path("bench-output/fusion"),
           classes: Annotated[int, typer.Option(help="Enrolled unseen glyph classes.")] = 2000,
           per_class: Annotated[int, typer.Option(help="Drawings enrolled per class.")] = 3,
           non_mated: Annotated[int, typer.Option(
               help="Non-mated searches (half calibrate, half check FPIR).")] = 4000,
           fpir: Annotated[float, typer.Option(help="Target FPIR of the calibrated threshold.")] = 0.01,
           rounds: Annotated[int, typer.Option(help="Interleaved latency rounds.")] = 5) -> None:
    """Fused ensemble vs each of its models on the same glyph searches: top-1, FNIR at FPIR,
    identify latency and memory side by side (writes fusion.json)."""
    from ..cli_common import console

    result = run([str(m) for m in model], classes=classes, per_class=per_class, non_mated=non_mated,
                 fpir=fpir, rounds=rounds, log=console.print)
    out.mkdir(parents=True, exist_ok=True)
    (out / "fusion.json").write_text(json.dumps(result, indent=2))
    console.print(format_rows(result), highlight=False)
    console.print(f"written: {out / 'fusion.json'}")


def register(app: typer.Typer) -> None:
    """Add ``fusion`` to the ``megaclass bench`` group (listed after bench's own commands)."""
    from .commands import bench_app

    bench_app.command("fusion")(fusion)


if __name__ == "__main__":
    typer.run(fusion)
