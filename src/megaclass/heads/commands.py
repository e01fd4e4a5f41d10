"""CLI commands of the heads area: ``megaclass predict`` and ``megaclass export-head``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from ..cli_common import GalleryOpt, JsonOpt, ModelOpt, SamplesArg, SeedOpt, _emit, _load_samples, console

HeadOpt = Annotated[Path, typer.Option("--head", "-H", help="Head directory (head.json + head.safetensors).")]
DataOpt = Annotated[str | None, typer.Option("--data", help="Data spec the head was trained on (glyphs:START-END or a folder), for class names; default class-<id>.")]


def register(app: typer.Typer) -> None:
    """Add the head commands to the ``megaclass`` app."""
    app.command()(predict)
    app.command(name="export-head")(export_head)


def _names(head, data: str | None) -> list[str]:
    from .export import head_labels

    if data is None:
        return head_labels(head)
    from ..data.spec import open_source

    return head_labels(head, open_source(data).class_names)


def predict(model: ModelOpt, head: HeadOpt, samples: SamplesArg,
            k: Annotated[int, typer.Option("-k", help="Classes to return per sample.")] = 5,
            data: DataOpt = None, seed: SeedOpt = 0, as_json: JsonOpt = False) -> None:
    """Closed-set prediction with a trained head: top-k classes of each sample (no gallery needed).

    Partial FC scans its centres in chunks, hierarchical runs a beam search; for millions of
    classes and repeated queries, `export-head` into a gallery and use `identify` instead.
    """
    from ..models import load_encoder
    from .registry import load_head

    enc = load_encoder(model)
    h = load_head(head)
    h.eval()
    names = _names(h, data)
    x = _load_samples(samples, enc.input_size, seed)
    scores, ids = h.predict(enc.embed(x), k=k)
    predictions: list[dict[str, Any]] = [
        {"sample": s, "candidates": [{"label": names[i], "score": float(v)} for v, i in zip(sc, ix, strict=True)]}
        for s, sc, ix in zip(samples, scores.tolist(), ids.tolist(), strict=False)]
    table = Table(title=f"{h.name} head, {h.num_classes:,} classes")
    table.add_column("sample")
    table.add_column("top classes (score)")
    for p in predictions:
        table.add_row(p["sample"], ", ".join(f"{c['label']} ({c['score']:.3f})" for c in p["candidates"]))
    _emit({"predictions": predictions}, as_json, table)


def export_head(head: Annotated[Path, typer.Argument(help="Head directory to export, or a training checkpoint (a step directory or --checkpoint-dir; sharded by --nproc or not).")],
                gallery: GalleryOpt, data: DataOpt = None,
                replace: Annotated[bool, typer.Option(help="Replace classes already enrolled.")] = False,
                as_json: JsonOpt = False) -> None:
    """Enroll a trained head's class centres into a gallery (one template per class)."""
    from ..train.sharded import export_checkpoint_head, is_checkpoint
    from .export import export_to_gallery
    from .registry import load_head

    if is_checkpoint(head):  # read shard by shard (any world size), no optimizer state loaded
        names = None
        if data is not None:
            from ..data.spec import open_source

            names = open_source(data).class_names
        g, cfg = export_checkpoint_head(head, gallery, labels=names, replace=replace)
        n, dim, name = int(cfg["num_classes"]), int(cfg["dim"]), cfg["name"]
    else:
        h = load_head(head)
        g = export_to_gallery(h, gallery, labels=_names(h, data), replace=replace)
        n, dim, name = h.num_classes, h.dim, h.name
    result = {"gallery": str(gallery), "classes": n, "dim": dim, "head": name}
    g.close()
    if as_json:
        _emit(result, True)
    else:
        console.print(f"exported {n:,} class centres of the {name} head into {gallery}")
