"""CLI commands of the evaluation area: ``megaclass evaluate``."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from ..cli_common import GalleryOpt, JsonOpt, ModelOpt, SeedOpt, _emit, _labelled, _recognizer


def register(app: typer.Typer) -> None:
    """Add the evaluation commands to the ``megaclass`` app."""
    app.command()(evaluate)


def evaluate(model: ModelOpt, gallery: GalleryOpt,
             mated: Annotated[str, typer.Option(help="Samples of ENROLLED classes (labels must match): glyphs:START-END or a folder.")],
             non_mated: Annotated[str | None, typer.Option(help="Samples of classes NOT enrolled.")] = None,
             target_fpir: Annotated[list[float], typer.Option(help="FPIR(s) to report FNIR at.")] = [0.01],
             per_class: Annotated[int, typer.Option(help="With glyphs: queries per class.")] = 1,
             seed: SeedOpt = 4, as_json: JsonOpt = False) -> None:
    """Closed-set top-1/top-5 on mated searches; FNIR at FPIR with non-mated searches."""
    from .evaluate import fnir_at_fpir, top_k_accuracy

    rec = _recognizer(model, gallery)
    with rec:
        images, truth = _labelled(mated, rec.encoder.input_size, per_class, seed)
        decisions = rec.identify(images, k=5)
        result: dict = {"mated_searches": len(truth), **top_k_accuracy(
            [[m.label for m in d.candidates] for d in decisions], truth, ks=(1, 5))}
        if non_mated:
            nm_images, _ = _labelled(non_mated, rec.encoder.input_size, per_class, seed)
            nm_scores = [d.score for d in rec.identify(nm_images, k=1)]
            scores = [d.score for d in decisions]
            correct = [bool(d.candidates) and d.candidates[0].label == t
                       for d, t in zip(decisions, truth, strict=True)]
            result["non_mated_searches"] = len(nm_scores)
            result["open_set"] = [fnir_at_fpir(scores, correct, nm_scores, f) for f in target_fpir]
    table = Table(title="evaluation")
    table.add_column("metric")
    table.add_column("value", justify="right")
    table.add_row("mated searches", f"{result['mated_searches']:,}")
    table.add_row("top-1", f"{result['top1']:.2%}")
    table.add_row("top-5", f"{result['top5']:.2%}")
    for r in result.get("open_set", []):
        table.add_row(f"FNIR @ FPIR {r['target_fpir']:g} (T={r['threshold']:.3f})", f"{r['fnir']:.2%}")
    _emit(result, as_json, table)


