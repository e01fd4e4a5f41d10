"""CLI commands of the gallery area: ``megaclass gallery check|compact|tune|export|import|migrate|keygen|reembed``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from ..cli_common import (
    GalleryOpt,
    JsonOpt,
    KeyOpt,
    QuietOpt,
    SkipBadOpt,
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
    from ..bench.commands import bench_app

    bench_app.command("reembed")(bench_reembed)


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
def migrate(source: Annotated[str, typer.Argument(help="Gallery to copy: a folder, milvus://HOST:PORT/COLLECTION or milvus-lite://FILE.db.")],
            dest: Annotated[str, typer.Argument(help="Where to copy it (created with the source's dim when missing).")],
            batch: Annotated[int, typer.Option(help="Classes per all-or-nothing write.")] = 500,
            key_file: KeyOpt = None, quiet: QuietOpt = False, as_json: JsonOpt = False) -> None:
    """Copy every class and the settings of SOURCE into DEST, with a progress bar; run it again
    to resume (classes DEST holds are skipped). --key-file opens an encrypted local SOURCE."""
    from .migrate import migrate as run

    if batch < 1:
        raise InvalidInputError(f"--batch must be >= 1, got {batch}")
    out = run(source, dest, batch=batch, key=_read_key_file(key_file), progress=not (quiet or as_json))
    if as_json:
        _emit(out, True)
    else:
        console.print(f"copied {out['copied']:,} classes ({out['templates']:,} templates), skipped "
                      f"{out['skipped']:,} already there; {dest} holds {out['destination_classes']:,} "
                      f"classes ({out['seconds']} s)")


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


@gallery_app.command()
def reembed(gallery: GalleryOpt,
            model: Annotated[Path | None, typer.Option("--model", "-m", help="The NEW model directory.")] = None,
            from_data: Annotated[str | None, typer.Option(
                "--from", help="Original samples: a folder of class folders, glyphs:START-END, or 'retained' "
                               "(default: the samples kept by `enroll --retain-samples`).")] = None,
            per_class: Annotated[int, typer.Option(help="With --from glyphs: samples per class (as enrolled).")] = 5,
            seed: Annotated[int, typer.Option(help="With --from glyphs: drawing stream (as enrolled).")] = 1,
            allow_missing: Annotated[bool, typer.Option(
                "--allow-missing", help="Erase classes the source lacks at the switch (default: refuse, naming them).")] = False,
            abort: Annotated[bool, typer.Option("--abort", help="Discard a re-embed in progress.")] = False,
            status: Annotated[bool, typer.Option("--status", help="Show the re-embed in progress, if any.")] = False,
            key_file: KeyOpt = None, quiet: QuietOpt = False, skip_bad_files: SkipBadOpt = False,
            as_json: JsonOpt = False) -> None:
    """Re-make every template with a new model beside the live ones, then switch atomically (resumable)."""
    from ..progress import ItemProgress
    from . import reembed as rb

    with _open_gallery(gallery, key_file) as g:
        if status or abort:
            result = rb.status(g) if status else {"aborted": True, "staged_classes": rb.abort(g)}
            _emit(result, as_json, _fields_table(f"re-embed of {gallery}", result))
            return
        if model is None:
            raise InvalidInputError("give the new model with --model (or --status / --abort)")
        new_model: Any = model  # the model directory, or its encoder when loaded here for glyphs
        source: Any = from_data  # a data spec, or the glyph samples made here
        if from_data:
            from ..data.spec import parse_glyph_range

            ids = parse_glyph_range(from_data)
            if ids is not None:
                from ..models import load_encoder
                from .sample_sources import GlyphSamples

                new_model = load_encoder(model)
                source = GlyphSamples(ids, new_model.input_spec, per_class=per_class, seed=seed)
        bar: list[ItemProgress] = []

        def progress(done: int, total: int) -> None:
            if not bar:
                bar.append(ItemProgress(total, "re-embed", unit="classes", enabled=not (quiet or as_json)).__enter__())
            bar[0].advance(done - bar[0].done)

        try:
            result = g.reembed(new_model, source, allow_missing=allow_missing, progress=progress,
                               skip_bad_files=skip_bad_files)
        finally:
            if bar:
                bar[0].__exit__(None, None, None)
    if as_json:
        _emit(result, True)
    elif result["status"] == "already":
        console.print(f"{gallery}: its templates are already from model {result['model']}: nothing to do")
    else:
        console.print(f"re-embedded {result['classes']:,} classes of {gallery} with model {result['model']} "
                      f"({result['dim']}-d, {result['templates']:,} templates, index {result['index']}) "
                      f"in {result['seconds']:.1f} s")
        if result["dim"] != result["dim_before"]:
            console.print(f"the new model makes {result['dim']}-d embeddings (the gallery held "
                          f"{result['dim_before']}-d): a new {result['dim']}-d index was built")
        if result["dropped_classes"]:
            console.print(f"[yellow]erased {len(result['dropped_classes'])} classes the source lacks[/yellow]")
        if result["dropped_settings"]:
            console.print("[yellow]the old threshold was dropped (it fits the old model's scores): "
                          "run `megaclass calibrate`[/yellow]")


def bench_reembed(out: Annotated[Path, typer.Option(help="Folder for reembed_bench.json (and the work gallery).")] = Path("bench-output/reembed"),
                  classes: Annotated[int, typer.Option(help="Glyph classes in the gallery.")] = 5000,
                  cycles: Annotated[int, typer.Option(help="kill -9 cycles before the final resume.")] = 20,
                  seed: int = 0, as_json: JsonOpt = False) -> None:
    """kill -9 a re-embed at random points CYCLES times, check one model after each kill, resume."""
    import json
    import shutil

    from ..bench.reembed import torture

    work = out / "work"
    shutil.rmtree(work, ignore_errors=True)
    result = torture(work, classes=classes, cycles=cycles, seed=seed,
                     log=(lambda *a: None) if as_json else console.print)
    out.mkdir(parents=True, exist_ok=True)
    (out / "reembed_bench.json").write_text(json.dumps(result, indent=1))
    shutil.rmtree(work, ignore_errors=True)
    summary = {k: v for k, v in result.items() if k != "record"}
    _emit(summary if not as_json else result, as_json, _fields_table("bench reembed", summary))
