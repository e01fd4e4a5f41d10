"""Shared pieces of the ``megaclass`` command line: option types, output, sample loading.

Area modules (``evaluate/commands.py``, ``serve/commands.py``, ...) import from here,
never from ``megaclass.cli``, so the CLI has no import cycles.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import numpy as np
import typer
from rich.console import Console, JustifyMethod
from rich.table import Table

from .errors import ConfigError, InvalidInputError

if TYPE_CHECKING:
    from .fusion import FusedRecognizer
    from .recognizer import Recognizer

console = Console()
err_console = Console(stderr=True)

ModelOpt = Annotated[Path, typer.Option("--model", "-m", help="Model directory (config.json + model.safetensors), or a shipped model by name: reference.")]
ModelsOpt = Annotated[list[Path], typer.Option("--model", "-m", help="Model directory (config.json + model.safetensors), or a shipped model by name: reference. Repeat it for an ensemble (-m a/ -m b/): one gallery per model under -g (-g/model-0, -g/model-1, ...), scores fused by the ensemble's rule (--fusion; z-score sum by default), threshold calibrated on the fused score; always give the same models in the same order.")]
FusionOpt = Annotated[str | None, typer.Option("--fusion", help="Ensembles (several -m): how scores are fused, RULE[:W1,W2,...] with RULE zsum (z-score sum, the default) | minmax (min-max sum) | borda (rank level), and optionally one weight per model in -m order (zsum:2,1 is a weighted sum). Stored with the ensemble and used whenever it is reopened; calibrate --fusion changes it.", show_default=False)]
GalleryOpt = Annotated[Path, typer.Option("--gallery", "-g", parser=lambda s: s if "://" in s else Path(s), help="Gallery directory (created on first enroll), or milvus://HOST:PORT/COLLECTION (a Milvus server; token: --milvus-token / $MEGACLASS_MILVUS_TOKEN) or milvus-lite://FILE.db.")]
MilvusTokenOpt = Annotated[str | None, typer.Option(
    "--milvus-token", help="Credentials of a secured Milvus (token or user:password) for -g milvus://... "
                           "(default: $MEGACLASS_MILVUS_TOKEN).", show_default=False)]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON instead of tables.")]
QuietOpt = Annotated[bool, typer.Option("--quiet", help="No progress bar.")]
SkipBadOpt = Annotated[bool, typer.Option("--skip-bad-files", help="Image folders: warn about and leave out corrupt image files instead of stopping (default: stop, nothing written).")]
SeedOpt = Annotated[int, typer.Option(help="Drawing stream for glyph:ID samples (0 = training stream).")]
KeyOpt = Annotated[Path | None, typer.Option(
    "--key-file", help="Encryption key file of the gallery (32 raw bytes, 64 hex characters or base64; "
                       "default: $MEGACLASS_GALLERY_KEY_FILE, else $MEGACLASS_GALLERY_KEY, else no "
                       "encryption). Create one with `megaclass gallery keygen`.")]
SamplesArg = Annotated[list[str], typer.Argument(
    help="Image files, folders of images, or glyph:ID (a built-in glyph drawing of class ID).")]


def _fields_table(title: str, data: dict, *, justify: JustifyMethod = "left") -> Table:
    """A two-column field/value table of ``data`` (lists shown joined by "; ")."""
    table = Table(title=title)
    table.add_column("field")
    table.add_column("value", justify=justify)
    for key, value in data.items():
        table.add_row(key, "; ".join(map(str, value)) if isinstance(value, list) else str(value))
    return table


def _emit(data: dict, as_json: bool, table: Table | None = None) -> None:
    if as_json:
        typer.echo(json.dumps(data, indent=2, default=float))
    elif table is not None:
        console.print(table)


def _collect_samples(items: list[str], size, seed: int, index: int = 0):
    """CLI sample arguments -> ``(batch, names, classes)``.

    An item is an image file, ``glyph:ID``, or a folder: flat (its images) or nested the
    way ``enroll --from`` and ``train`` read them (``root/<class>/<image>``, any depth).
    ``names`` holds each image's file path (or ``glyph:ID``); ``classes`` the class folder
    an image sits in below a folder argument (``None`` for files and a folder's own images),
    so a result can be checked against where the file came from. ``size`` is the model's
    InputSpec (or a side in pixels: the handwriting contract).
    """
    import torch

    from .data.folder import IMAGE_EXTENSIONS, _scan
    from .data.glyphs import GlyphSource
    from .data.images import as_spec, to_batch

    spec = size if not isinstance(size, int) else as_spec(size)
    parts: list[torch.Tensor] = []
    names: list[str] = []
    classes: list[str | None] = []
    for item in items:
        if item.startswith("glyph:"):
            try:
                cid = int(item.split(":", 1)[1])
            except ValueError:
                raise InvalidInputError(f"bad sample {item!r}: use glyph:<class id>") from None
            glyph = GlyphSource.samples(cid, n=1, seed=seed, size=spec.size, start=index)
            parts.append(to_batch(glyph, spec=spec))
            names.append(item)
            classes.append(None)
            continue
        path = Path(item)
        if path.is_dir():
            found = _scan(path, IMAGE_EXTENSIONS)
            files = [(f, rel or None) for rel in sorted(found) for f in found[rel]]
            if not files:
                raise InvalidInputError(f"folder {path} holds no images (nor class folders of images)")
            parts.append(to_batch([str(f) for f, _ in files], spec=spec))
            names += [str(f) for f, _ in files]
            classes += [c for _, c in files]
        else:
            parts.append(to_batch(str(path), spec=spec))
            names.append(str(path))
            classes.append(None)
    if not parts:
        raise InvalidInputError("no samples given")
    return torch.cat(parts), names, classes


def _load_samples(items: list[str], size, seed: int, index: int = 0):
    """The image batch of :func:`_collect_samples` (paths, folders, glyph:ID)."""
    return _collect_samples(items, size, seed, index)[0]


def _use_milvus_token(token: str | None) -> None:
    """``--milvus-token``: hand it to every Milvus gallery this process opens."""
    if token:
        os.environ["MEGACLASS_MILVUS_TOKEN"] = token


def _read_key_file(key_file: Path | None) -> bytes | None:
    """The 32-byte key in ``key_file`` (None: leave it to the environment), or EncryptionKeyError."""
    if key_file is None:
        return None
    from .gallery.crypto import resolve_key

    return resolve_key(Path(key_file))


def _recognizer(model: Path | list[Path], gallery: Path, create: bool = False,
                threshold: float | None = None, key: Path | None = None, *,
                fusion: str | None = None, change_fusion: bool = False) -> Recognizer | FusedRecognizer:
    """A Recognizer on ``gallery``; ``key`` (a key file) decrypts an encrypted one.

    Several models (``-m`` repeated), or a gallery folder that holds an ensemble, give a
    :class:`~megaclass.fusion.FusedRecognizer` (see :mod:`megaclass.fusion_gallery`; a
    mismatch between the models given and those enrolled is a ConfigError naming it).
    ``fusion`` (``--fusion``) is the rule of a new ensemble; on an ensemble that has one
    stored it must be the same unless ``change_fusion`` (calibrate, which re-fits it), and
    with one model and a plain gallery it is refused.
    Without ``key`` the environment decides (``$MEGACLASS_GALLERY_KEY_FILE`` /
    ``$MEGACLASS_GALLERY_KEY``); a new gallery created with a key is encrypted.
    """
    from .fusion import parse_fusion
    from .fusion_gallery import is_ensemble, open_ensemble
    from .gallery.open import gallery_exists, open_gallery
    from .models import load_encoder
    from .recognizer import Recognizer

    models = list(model) if isinstance(model, list | tuple) else [model]
    key_bytes = _read_key_file(key)
    if len(models) > 1 or is_ensemble(gallery):
        rule, weights = parse_fusion(fusion, len(models)) if fusion is not None else (None, None)
        ens = open_ensemble(models, gallery, create=create, key=key_bytes, threshold=threshold,
                            rule=rule, weights=weights)
        _check_fusion(ens, fusion, change_fusion)
        return ens
    if fusion is not None:
        raise ConfigError(f"--fusion {fusion} fuses the scores of several models: give two or more -m "
                          "(one model's gallery has nothing to fuse)")
    encoder = load_encoder(models[0])
    if not create and not gallery_exists(gallery):
        raise InvalidInputError(f"{gallery} is not a gallery (enroll something first)")
    return Recognizer(encoder, open_gallery(gallery, dim=encoder.dim, key=key_bytes, create=create),
                      threshold=threshold)


def _check_fusion(ens: FusedRecognizer, fusion: str | None, change: bool) -> None:
    """ConfigError (ensemble closed) when ``--fusion`` differs from the rule ``ens`` has stored
    and the command does not re-fit it (only calibrate does)."""
    if fusion is None or change:
        return
    try:
        ens.check_stored_fusion()
    except ConfigError:
        ens.close()
        raise


def _open_gallery(gallery: Path, key: Path | None = None, *, ensemble_ok: bool = False):
    """Open an existing gallery (never create one); ``key`` as in :func:`_recognizer`.
    An ensemble folder gives its :class:`~megaclass.fusion_gallery.MemberGalleries` when
    ``ensemble_ok`` (erase, stats), else ConfigError saying to give its models."""
    from .fusion_gallery import MemberGalleries, member_folder, read_manifest
    from .gallery.open import gallery_exists, open_gallery

    key_bytes = _read_key_file(key)
    manifest = read_manifest(gallery)
    if manifest is not None:
        if ensemble_ok:
            return MemberGalleries(gallery, key_bytes)
        n = len(manifest["models"])
        raise ConfigError(
            f"{gallery} is an ensemble gallery ({n} models: {', '.join(manifest['models'])}; one "
            f"gallery per model in {', '.join(str(member_folder(gallery, i)) for i in range(n))}): "
            "this command works on one model's gallery and does not support an ensemble yet")
    if not gallery_exists(gallery):
        raise InvalidInputError(f"{gallery} is not a gallery")
    return open_gallery(gallery, create=False, key=key_bytes)


def _labelled(spec: str, size, per_class: int, seed: int, *, with_files: bool = False,
              skip_bad_files: bool = False):
    """Images and their labels for a data spec (glyph labels are glyph-<id>).

    With ``with_files`` a third item lists each image's file (``None`` for glyphs).

    ``size`` is the model's InputSpec (or a side in pixels: the handwriting contract).
    """
    import torch

    from .data.images import as_spec, to_batch
    from .data.spec import parse_glyph_range

    input_spec = size if not isinstance(size, int) else as_spec(size)
    ids = parse_glyph_range(spec)
    if ids is not None:
        from .data.glyphs import GlyphSource

        images, cls = GlyphSource.batch(np.asarray(ids), per_class, seed=seed, size=input_spec.size)
        out = to_batch(images, spec=input_spec), [f"glyph-{i}" for i in cls]
        return (*out, None) if with_files else out
    from .data.folder import ImageFolderSource

    src = ImageFolderSource(Path(spec), spec=input_spec, cache=False, skip_bad_files=skip_bad_files)
    pairs = [src[i] for i in range(len(src))]
    images, labels = torch.stack([p[0] for p in pairs]), [src.class_names[p[1]] for p in pairs]
    return (images, labels, [str(p) for p in src.paths]) if with_files else (images, labels)


