"""CLI commands of the models area: ``megaclass export`` and ``megaclass import-encoder``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ..cli_common import JsonOpt, ModelOpt, QuietOpt, _emit, _fields_table, err_console
from ..errors import ConfigError


def register(app: typer.Typer) -> None:
    """Add ``export`` and ``import-encoder`` to the ``megaclass`` app."""
    app.command("export")(export)
    app.command("import-encoder")(import_encoder)


def export(model: ModelOpt,
           out: Annotated[Path, typer.Option("--output", "-o", help="The file to write (model.onnx, model.pt).")],
           format: Annotated[str, typer.Option("--format", help="onnx or torchscript.")] = "onnx",
           quiet: QuietOpt = False, as_json: JsonOpt = False) -> None:
    """Export a model (normalisation included; input [0, 1] NCHW float, any batch size), checked against torch.

    The exported model must match torch's embeddings within 1e-4 cosine on 100 images, or nothing is
    written. ONNX files carry the input contract in their metadata, so `import-encoder` needs no options.
    """
    from .encoder import Encoder, load_encoder
    from .export import export_encoder

    encoder = load_encoder(model)
    if not isinstance(encoder, Encoder):
        raise ConfigError(f"{model} is an imported ONNX encoder: export writes trained megaclass models")
    with _working(f"exporting {model} as {format}, then checking it against torch on 100 images",
                  not (quiet or as_json)):
        report = export_encoder(encoder, out, format=format)
    shown = {k: report[k] for k in ("path", "format", "bytes", "dim", "samples", "min_cosine",
                                    "max_abs_diff", "source_fingerprint")}
    _emit(shown, as_json, _fields_table(f"exported {model} as {format}", shown))


def import_encoder(
        onnx_file: Annotated[Path, typer.Argument(help="An ONNX embedding model: images in, (N, dim) out.")],
        out: Annotated[Path, typer.Option("--output", "-o", help="Model directory to create (config.json + model.onnx).")],
        size: Annotated[int | None, typer.Option(help="Side of the square input in pixels (default: the graph's).")] = None,
        channels: Annotated[int | None, typer.Option(help="1 (grayscale) or 3 (RGB) (default: the graph's).")] = None,
        mean: Annotated[str | None, typer.Option(help="Pixel-unit mean subtracted before the graph: one value or one per channel, comma-separated (default 0).")] = None,
        std: Annotated[str | None, typer.Option(help="Pixel-unit divisor after the mean: one value or one per channel (default 255, i.e. the graph gets [0, 1]).")] = None,
        dim: Annotated[int | None, typer.Option(help="Expected embedding dimension; checked on a test batch.")] = None,
        layout: Annotated[str | None, typer.Option(help="NCHW or NHWC: the graph's image tensor layout (default: guessed from its input shape).")] = None,
        normalise_output: Annotated[bool, typer.Option("--normalise-output/--no-normalise-output", help="L2-normalise each embedding (keep on unless the graph already does).")] = True,
        resize: Annotated[str | None, typer.Option(help="pad, crop or stretch: how a non-square image becomes square (stretch for aligned face crops).")] = None,
        polarity: Annotated[str | None, typer.Option(help="none (keep images as they are) or auto (invert light-background drawings).")] = None,
        quiet: QuietOpt = False, as_json: JsonOpt = False) -> None:
    """Import an ONNX embedding model as a megaclass encoder usable everywhere a model is (-m DIR).

    Files written by `megaclass export` bring their own contract; for other models give it, e.g. an
    ArcFace ResNet: --size 112 --channels 3 --mean 127.5 --std 128 --dim 512 --resize stretch.
    The model is run on a test batch first; nothing is written unless its output is a finite (N, dim).
    """
    from .onnx_encoder import OnnxEncoder

    with _working(f"importing {onnx_file}: loading the graph and running a test batch",
                  not (quiet or as_json)):
        enc = OnnxEncoder.from_onnx(onnx_file, size=size, channels=channels, mean=_floats("mean", mean),
                                    std=_floats("std", std), dim=dim, layout=layout.upper() if layout else None,
                                    l2_normalise=None if normalise_output else False, resize=resize,
                                    polarity=polarity)
        enc.save(out)
    c = enc.config
    result = {"model": str(out), "kind": "megaclass.onnx_encoder", "source": str(onnx_file), "dim": c.dim,
              "layout": c.layout, "l2_normalise": c.l2_normalise, **c.input.to_dict(),
              "fingerprint": enc.fingerprint(), "source_fingerprint": c.source_fingerprint}
    shown = {k: ", ".join(f"{x:g}" for x in v) if isinstance(v, list) else v for k, v in result.items()}
    _emit(result, as_json, _fields_table(f"imported {onnx_file} -> {out}", shown))


def _working(message: str, enabled: bool):
    """A spinner with the elapsed time on stderr while a one-shot step runs (off: a no-op)."""
    from contextlib import nullcontext

    return err_console.status(message) if enabled else nullcontext()


def _floats(name: str, text: str | None) -> list[float] | None:
    if text is None:
        return None
    try:
        return [float(v) for v in text.split(",")]
    except ValueError:
        raise ConfigError(f"--{name} takes numbers separated by commas, got {text!r}") from None
