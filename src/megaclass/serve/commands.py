"""CLI commands of the service: ``serve``, ``keys add|list|revoke``, ``audit``, ``loadtest``."""

from __future__ import annotations

import json
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from ..cli_common import (
    FusionOpt,
    GalleryOpt,
    JsonOpt,
    KeyOpt,
    MilvusTokenOpt,
    ModelOpt,
    ModelsOpt,
    _emit,
    _read_key_file,
    _use_milvus_token,
    console,
    err_console,
)

keys_app = typer.Typer(no_args_is_help=True, help="Create, list and revoke API keys of a served gallery.")


def _service_db(gallery: Path, model: Path | None = None, key: Path | None = None):
    from ..fusion_gallery import is_ensemble, service_folder
    from ..gallery.open import is_uri, open_gallery
    from .db import DB_NAME, ServiceDB

    if is_ensemble(gallery):  # the service's tables live in the first member's gallery
        return ServiceDB(service_folder(gallery))
    if is_uri(gallery) or (model is not None and not (gallery / DB_NAME).exists()):  # create it for the model
        from ..models import load_encoder

        dim = load_encoder(model).dim if model is not None else None
        with open_gallery(gallery, dim=dim, key=_read_key_file(key), create=model is not None) as g:
            gallery = g.path  # a Milvus gallery's side folder holds the service's database
    return ServiceDB(gallery)


def serve(model: ModelsOpt, gallery: GalleryOpt,
          host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
          port: Annotated[int, typer.Option(help="TCP port.")] = 8000,
          max_body_bytes: Annotated[int, typer.Option(help="Largest request body.")] = 16 * 1024 * 1024,
          max_images: Annotated[int, typer.Option(help="Images per enroll / identify request.")] = 64,
          max_vectors: Annotated[int, typer.Option(help="Vectors per JSON request.")] = 1024,
          max_pixels: Annotated[int, typer.Option(help="Pixels of one image (read from its header before decoding).")] = 4096 * 4096,
          max_side: Annotated[int, typer.Option(help="Longest side of one image in pixels.")] = 16384,
          max_request_pixels: Annotated[int, typer.Option(help="Decoded pixels of all images of one request.")] = 64 * 1024 * 1024,
          max_k: Annotated[int, typer.Option(help="Largest top-k.")] = 100,
          max_calibration_images: Annotated[int, typer.Option(help="Images per POST /v1/calibrate (at most 1000, the multipart parser's own limit).")] = 1000,
          max_refusals: Annotated[int, typer.Option(help="Refused (401) requests per client and minute that are audited; past it: 429.")] = 30,
          log_level: Annotated[str, typer.Option(help="uvicorn log level.")] = "info",
          fusion: FusionOpt = None,
          key_file: KeyOpt = None, milvus_token: MilvusTokenOpt = None) -> None:
    """Serve enroll / identify / verify / erase over HTTP (FastAPI + uvicorn), with API keys, and
    the operator console at / (open it in a browser and sign in with a key)."""
    import uvicorn

    _use_milvus_token(milvus_token)
    from .app import create_app
    from .limits import Limits

    limits = Limits(max_body_bytes=max_body_bytes, max_images=max_images, max_vectors=max_vectors,
                    max_pixels=max_pixels, max_side=max_side, max_request_pixels=max_request_pixels,
                    max_k=max_k, max_calibration_images=max_calibration_images, max_refusals=max_refusals)
    app = create_app(model, gallery, limits=limits, key=_read_key_file(key_file), fusion=fusion)
    if not app.state.service.keys.list(include_revoked=False):
        console.print("[yellow]no API keys yet:[/yellow] create one with "
                      f"`megaclass keys add -g {gallery} --role admin --name me`")
    if not app.state.service.recognizer.calibrated:
        err_console.print("[yellow]the gallery is not calibrated:[/yellow] identify and verify answer 409 "
                          "unless a request gives ?threshold= or ?no_threshold=true; set one with "
                          f"`megaclass calibrate {' '.join(f'-m {m}' for m in model)} -g {gallery} "
                          "--non-mated DATA`")
    err_console.print(f"console: http://{host}:{port}/  (API docs: /docs)")
    uvicorn.run(app, host=host, port=port, log_level=log_level)


@keys_app.command("add")
def keys_add(gallery: GalleryOpt,
             role: Annotated[str, typer.Option(help="reader | enroller | admin")] = "reader",
             name: Annotated[str, typer.Option(help="Who or what uses the key.")] = "default",
             model: Annotated[Path | None, typer.Option("--model", "-m", help="Create the gallery for this model if missing.")] = None,
             key_file: Annotated[Path | None, typer.Option("--key-file", help=(
                 "With --model, when the gallery is created: encrypt it with this key file (default: "
                 "$MEGACLASS_GALLERY_KEY_FILE, else $MEGACLASS_GALLERY_KEY). API keys themselves are "
                 "stored as hashes, never encrypted."))] = None,
             as_json: JsonOpt = False) -> None:
    """Create a key and print it (shown once; only its hash is stored)."""
    from .keys import KeyStore

    with _service_db(gallery, model, key_file) as db:
        info, token = KeyStore(db).add(name, role)
    if as_json:
        _emit({"key": info.to_dict(), "token": token}, True)
    else:
        console.print(f"key {info.id} ({info.role}, {info.name}); keep it, it is not shown again:")
        typer.echo(token)


@keys_app.command("list")
def keys_list(gallery: GalleryOpt, as_json: JsonOpt = False) -> None:
    """List keys (never their secrets)."""
    from .keys import KeyStore

    with _service_db(gallery) as db:
        keys = KeyStore(db).list()
    table = Table(title=f"API keys of {gallery}")
    for col in ("id", "role", "name", "created", "revoked"):
        table.add_column(col)
    for k in keys:
        table.add_row(k.id, k.role, k.name, k.created_at, k.revoked_at or "")
    _emit({"keys": [k.to_dict() for k in keys]}, as_json, table)


@keys_app.command("revoke")
def keys_revoke(gallery: GalleryOpt, key_id: Annotated[str, typer.Argument(help="The key's id.")],
                as_json: JsonOpt = False) -> None:
    """Revoke a key (takes effect on its next request, also on a running server)."""
    from .keys import KeyStore

    with _service_db(gallery) as db:
        info = KeyStore(db).revoke(key_id)
    if as_json:
        _emit(info.to_dict(), True)
    else:
        console.print(f"revoked {info.id} ({info.role}, {info.name})")


def audit(gallery: GalleryOpt,
          limit: Annotated[int, typer.Option(help="Rows to show (newest first).")] = 50,
          operation: Annotated[str | None, typer.Option(help="enroll | add | erase | identify | verify | calibrate | keys | read | request")] = None,
          label: Annotated[str | None, typer.Option(help="Only rows involving this label.")] = None,
          key_id: Annotated[str | None, typer.Option(help="Only rows of this key.")] = None,
          since: Annotated[str | None, typer.Option(help="Only rows at or after this ISO time (UTC).")] = None,
          as_json: JsonOpt = False) -> None:
    """Show the audit log of a served gallery."""
    from ..gallery.store import erased_tag
    from .audit import AuditLog

    with _service_db(gallery) as db:
        labels = None
        if label is not None:  # an erased label is logged as its salted hash: find those rows too
            uuid = json.loads(db.query("SELECT value FROM meta WHERE key = 'uuid'")[0][0])
            labels = [label, erased_tag(uuid, label)]
        rows = AuditLog(db).query(limit=limit, operation=operation, label=labels, key_id=key_id,
                                  since=since)
    table = Table(title=f"audit log of {gallery}")
    for col in ("time", "key", "operation", "labels", "decision", "status"):
        table.add_column(col)
    for r in rows:
        table.add_row(r["time"], r["key_id"] or "", r["operation"], ", ".join(r["labels"][:5]),
                      r["decision"], str(r["status"]))
    _emit({"rows": rows}, as_json, table)


def loadtest(model: ModelOpt,
             gallery: Annotated[Path | None, typer.Option("--gallery", "-g", help="Gallery to serve (default: a fresh temporary one).")] = None,
             duration: Annotated[float, typer.Option(help="Seconds to run.")] = 30.0,
             clients: Annotated[int, typer.Option(help="Concurrent clients.")] = 8,
             identify_share: Annotated[float, typer.Option(help="Share of requests that identify (the rest enroll).")] = 0.8,
             classes: Annotated[int, typer.Option(help="Classes enrolled before the run.")] = 200,
             key_file: KeyOpt = None, as_json: JsonOpt = False) -> None:
    """Start `megaclass serve` on a free loopback port and drive it with concurrent clients."""
    from .loadtest import run_against_server

    with _key_in_environment(key_file):  # the enrolling here and the server process both need it
        report = run_against_server(model, gallery, duration=duration, clients=clients,
                                    identify_share=identify_share, classes=classes)
    if as_json:
        _emit(report, True)
    else:
        console.print(report["summary"])


@contextmanager
def _key_in_environment(key_file: Path | None):
    """Set ``$MEGACLASS_GALLERY_KEY_FILE`` to ``key_file`` (validated first) for a block."""
    if key_file is None:
        yield
        return
    from ..gallery.crypto import KEY_FILE_ENV

    _read_key_file(key_file)  # a missing or malformed key file fails here, with its message
    saved = os.environ.get(KEY_FILE_ENV)
    os.environ[KEY_FILE_ENV] = str(Path(key_file).resolve())
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop(KEY_FILE_ENV, None)
        else:
            os.environ[KEY_FILE_ENV] = saved


def register(app: typer.Typer) -> None:
    """Add the service commands to the ``megaclass`` CLI."""
    app.command()(serve)
    app.add_typer(keys_app, name="keys")
    app.command()(audit)
    app.command()(loadtest)
