"""Data commands: ``megaclass augment-preview`` (see what training sees).

Registered by :mod:`megaclass.cli` through ``register(app)``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import numpy as np
import torch
import typer

from ..cli_common import JsonOpt, _emit, console
from ..errors import ConfigError

GAP = 2  #: pixels between grid cells
_GAP_RGB = (128, 128, 128)


def pick_samples(labels: np.ndarray, num_classes: int, n: int) -> list[int]:
    """``n`` item indices taking one sample per class in turn (classes spread over the
    label range), so a preview shows as many different classes as it can."""
    classes = np.unique(np.linspace(0, num_classes - 1, min(n, num_classes)).round().astype(int))
    items = [np.flatnonzero(labels == c) for c in classes]
    picked: list[int] = []
    for rnd in range(max((len(i) for i in items), default=0)):
        for it in items:
            if rnd < len(it):
                picked.append(int(it[rnd]))
            if len(picked) == n:
                return picked
    return picked


def grid_size(n: int, rows: int, cell: int) -> tuple[int, int]:
    """(width, height) of a preview: ``n`` columns, the original row + ``rows`` augmented rows."""
    return n * cell + (n + 1) * GAP, (rows + 1) * cell + (rows + 2) * GAP


def draw_grid(rows_of_images: list[torch.Tensor], scale: int):
    """A PIL image: one row per ``(n, C, s, s)`` tensor in ``[0, 1]``, cells scaled by ``scale``."""
    from PIL import Image

    first = rows_of_images[0]
    n, _, s, _ = first.shape
    cell = s * scale
    width, height = grid_size(n, len(rows_of_images) - 1, cell)
    grid = Image.new("RGB", (width, height), _GAP_RGB)
    for r, batch in enumerate(rows_of_images):
        pixels = (batch.clamp(0, 1) * 255).round().to(torch.uint8)
        if pixels.shape[1] == 1:
            pixels = pixels.expand(-1, 3, -1, -1)
        for c in range(n):
            tile = Image.fromarray(pixels[c].permute(1, 2, 0).contiguous().numpy(), "RGB")
            tile = tile.resize((cell, cell), Image.Resampling.NEAREST)
            grid.paste(tile, (GAP + c * (cell + GAP), GAP + r * (cell + GAP)))
    return grid


def augment_preview(data: str, out: Path, *, augment: str = "default", n: int = 8, rows: int = 4,
                    seed: int = 0, size: int = 32, scale: int | None = None) -> dict:
    """Draw ``n`` samples of ``data`` (top row) and ``rows`` augmented versions of them.

    Row ``r`` is the pipeline's draw for training step ``r - 1`` under ``seed``: what
    the trainer feeds the encoder at that step. Returns what was written.
    """
    from .augment import build_augment, parse_augment
    from .spec import open_source

    if n < 1 or rows < 1:
        raise ConfigError(f"augment-preview needs n >= 1 and rows >= 1, got n={n}, rows={rows}")
    name, steps = parse_augment(augment)  # fail on a bad spec before reading any data
    source = open_source(data, size=size)
    index = pick_samples(np.asarray(source.labels), source.num_classes, n)
    if not index:
        raise ConfigError(f"{data} holds no samples to preview")
    images = torch.stack([source[i][0] for i in index])
    channels, side = int(images.shape[1]), int(images.shape[-1])
    aug = build_augment(steps, channels=channels, size=side, seed=seed)
    batches = [images] + [aug(images, step=r) if aug is not None else images.clone() for r in range(rows)]
    scale = scale or max(1, round(96 / side))
    grid = draw_grid(batches, scale)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    grid.save(out)
    names = source.class_names
    return {"path": str(out), "augment": name, "steps": steps, "seed": seed, "samples": len(index),
            "rows": rows, "channels": channels, "size": side, "width": grid.width, "height": grid.height,
            "classes": [names[int(source.labels[i])] for i in index]}


def register(app: typer.Typer) -> None:
    @app.command("augment-preview")
    def augment_preview_cmd(
            data: Annotated[str, typer.Argument(help="glyphs:START-END (built-in) or an image folder root/<class>/<image>.")],
            out: Annotated[Path, typer.Option("--out", "-o", help="PNG file to write.")],
            augment: Annotated[str, typer.Option(help="A preset (none, default, handwriting, faces), a JSON pipeline or a .json file.")] = "default",
            n: Annotated[int, typer.Option("--n", help="Samples (columns), one per class in turn.")] = 8,
            rows: Annotated[int, typer.Option(help="Augmented rows under the original row.")] = 4,
            seed: Annotated[int, typer.Option(help="Augmentation seed (as `train --seed`).")] = 0,
            size: Annotated[int, typer.Option(help="Input image side in pixels.")] = 32,
            scale: Annotated[int | None, typer.Option(help="Pixels per image pixel (default: cells ~96 px).")] = None,
            as_json: JsonOpt = False) -> None:
        """Draw a grid of DATA samples (top row) and augmented copies (rows below): what training sees."""
        result = augment_preview(data, out, augment=augment, n=n, rows=rows, seed=seed, size=size,
                                 scale=scale)
        if as_json:
            _emit(result, True)
        else:
            console.print(f"wrote {result['path']} ({result['width']}x{result['height']} px): "
                          f"{result['samples']} samples x (1 original + {rows} augmented rows), "
                          f"augment {result['augment']}: {', '.join(s['op'] for s in result['steps']) or 'none'}")
