"""CLI commands of the gallery area: ``megaclass gallery check|compact|tune|export|import|keygen``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ..cli_common import (
    GalleryOpt,
    JsonOpt,
    KeyOpt,
    _emit,
    _fields_table,
    _open_gallery,
    _read_key_file,
    console,
)
from ..errors import InvalidInputError

gallery_app = typer.Typer(help="Gallery maintenance: integrity check, compaction, export/import, keys.",
                          no_args_is_help=True)


def register(app: typer.Typer) -> None:
    """Add the ``gallery`` command group to the ``megaclass`` app."""
    app.add_typer(gallery_app, name="gallery")


@gallery_app.command()
def check(gallery: GalleryOpt, key_file: KeyOpt = None, as_json: JsonOpt = False) -> None:
    """Verify the store, every template and the index; exit 1 if anything is wrong."""
    with _open_gallery(gallery, key_file) as g:
        report = g.check()
    title = f"gallery check: {'[green]ok[/green]' if report['ok'] else '[red]PROBLEMS[/red]'}"
    _emit(report, as_json, _fields_table(title, report))
    raise typer.Exit(0 if report["ok"] else 1)


@gallery_app.command()
def compact(gallery: GalleryOpt, key_file: KeyOpt = None, as_json: JsonOpt = False) -> None:
    """Make erasures final on disk: VACUUM, truncate the WAL, rewrite the index snapshot."""
    with _open_gallery(gallery, key_file) as g:
        before = g.stats()["disk_bytes"]
        g.compact()
        after = g.stats()["disk_bytes"]
    result = {"disk_bytes_before": before, "disk_bytes_after": after}
    if as_json:
        _emit(result, True)
    else:
        console.print(f"compacted {gallery}: {before:,} -> {after:,} bytes")


@gallery_app.command()
def tune(gallery: GalleryOpt,
         queries: Annotated[Path, typer.Argument(help="A .npy file of 100 to 100k real probe vectors (float, (n, dim)).")],
         key_file: KeyOpt = None, as_json: JsonOpt = False) -> None:
    """Re-fit the index's search knobs so the best class of these probes matches exact search >= 99 %."""
    import numpy as np

    try:
        q = np.load(queries, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise InvalidInputError(f"{queries}: not a readable .npy array ({exc})") from exc
    with _open_gallery(gallery, key_file) as g:
        result = g.tune(q)
    _emit(result, as_json, _fields_table(f"gallery tune: {result['index']}", result))


@gallery_app.command("export")
def export_cmd(gallery: GalleryOpt, out: Annotated[Path, typer.Argument(help="New, empty export folder.")],
               key_file: KeyOpt = None, as_json: JsonOpt = False) -> None:
    """Export to manifest.json + .npy files (no pickle). Templates are written IN CLEAR."""
    with _open_gallery(gallery, key_file) as g:
        n = len(g)
        g.export(out)
    if as_json:
        _emit({"export": str(out), "classes": n}, True)
    else:
        console.print(f"exported {n:,} classes to {out} [yellow](templates in clear: protect it)[/yellow]")


@gallery_app.command("import")
def import_cmd(source: Annotated[Path, typer.Argument(help="A folder written by `megaclass gallery export`.")],
               gallery: GalleryOpt, key_file: KeyOpt = None, as_json: JsonOpt = False) -> None:
    """Create a new gallery from an export (encrypted if a key is configured)."""
    from .gallery import Gallery

    with Gallery.import_from(source, gallery, key=_read_key_file(key_file)) as g:
        n, enc = len(g), g.stats()["encrypted"]
    if as_json:
        _emit({"gallery": str(gallery), "classes": n, "encrypted": enc}, True)
    else:
        console.print(f"imported {n:,} classes into {gallery} ({'encrypted' if enc else 'in clear'})")


@gallery_app.command()
def keygen(out: Annotated[Path, typer.Argument(help="Where to write the new key file (must not exist).")]) -> None:
    """Write a new random 256-bit gallery key (hex) readable only by you."""
    import os

    from .crypto import generate_key

    if out.exists():
        raise InvalidInputError(f"{out} exists: refusing to overwrite a key")
    out.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(generate_key().hex() + "\n")
    console.print(f"wrote {out}; set MEGACLASS_GALLERY_KEY_FILE={out} or pass --key-file")
