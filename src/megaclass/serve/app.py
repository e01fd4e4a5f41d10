"""The application factory: :func:`create_app`."""

from __future__ import annotations

import os
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI
from fastapi_offline import FastAPIOffline

from ..errors import ConfigError
from ..fusion import FusedRecognizer, parse_fusion
from ..gallery import Gallery
from ..models import Encoder, load_encoder
from ..recognizer import Recognizer
from . import console, http_errors
from .db import ServiceDB
from .limits import BodySizeLimit, Limits
from .metrics import MetricsMiddleware
from .routers import admin, classes, health, recognition, reports
from .routers import gallery as gallery_router
from .service import Service
from .thumbnails import NoThumbnails, open_thumbnails

API_DESCRIPTION = """\
Enroll classes from a few images (or embeddings) without retraining, identify images among
them with rejection of unknowns, verify claimed identities.

Send an API key as `Authorization: Bearer mck_...`. Roles: **reader** (identify, verify,
stats, read classes), **enroller** (also enroll, add, erase), **admin** (also keys, audit and
calibrate). Errors are JSON `{"error": <type>, "message": <what was wrong>}`. The operator
console (a browser page over this API) is served at `/`.
"""


def create_app(model: str | os.PathLike | Encoder | Recognizer | FusedRecognizer | list,
               gallery: str | os.PathLike | None = None,
               *, limits: Limits | None = None, key: str | os.PathLike | bytes | None = None,
               fusion: str | None = None) -> FastAPI:
    """Build the FastAPI application serving one model and one gallery.

    Parameters
    ----------
    model : a model directory, an :class:`Encoder`, or a ready :class:`Recognizer`
        (then ``gallery`` is ignored); a list of models (or a ready
        :class:`~megaclass.fusion.FusedRecognizer`) serves an ensemble with fused scores, its
        galleries under the one folder ``gallery`` (see :mod:`megaclass.fusion_gallery`; the
        service's keys and audit log live in the first member's gallery). A gallery folder
        that holds an ensemble is served as one even when one model is given, so that a
        mismatch is refused naming the models.
    gallery : the gallery directory (created with the model's dimension if missing).
    limits : request limits; :class:`Limits` defaults otherwise.
    key : the gallery's encryption key (32 bytes or a key-file path; default:
        ``$MEGACLASS_GALLERY_KEY_FILE`` / ``$MEGACLASS_GALLERY_KEY``). A new gallery
        created with a key is encrypted; ignored when ``model`` is a Recognizer.
    fusion : an ensemble's fusion rule, ``RULE[:W1,...]`` (:func:`~megaclass.fusion.parse_fusion`):
        that of a new ensemble; an ensemble with another rule stored is refused (ConfigError:
        ``megaclass calibrate --fusion`` changes it). None: the stored rule. With one model on
        a plain gallery: ConfigError.

    The gallery and the service tables are opened here; the application's shutdown
    closes them (saving the index snapshot).

    Examples
    --------
    >>> from fastapi.testclient import TestClient                    # doctest: +SKIP
    >>> with TestClient(create_app("model/", "gallery/")) as client:  # doctest: +SKIP
    ...     client.get("/healthz").json()
    {'status': 'ok'}
    """
    from ..fusion_gallery import is_ensemble, open_ensemble, service_folder

    rec: Recognizer | FusedRecognizer
    if isinstance(model, Recognizer | FusedRecognizer):
        rec = model
    elif gallery is None:
        raise TypeError("create_app needs a gallery directory")
    elif isinstance(model, list | tuple) and len(model) == 1 and not is_ensemble(gallery):
        return create_app(model[0], gallery, limits=limits, key=key, fusion=fusion)
    elif isinstance(model, list | tuple) or is_ensemble(gallery):
        models = list(model) if isinstance(model, list | tuple) else [model]
        rule, weights = parse_fusion(fusion, len(models)) if fusion is not None else (None, None)
        ens = open_ensemble(models, gallery, key=key, rule=rule, weights=weights)
        try:
            ens.check_stored_fusion()
        except BaseException:
            ens.close()
            raise
        rec = ens
    elif fusion is not None:
        raise ConfigError(f"fusion {fusion!r} fuses the scores of several models: give two or more "
                          "(one model's gallery has nothing to fuse)")
    else:
        encoder = load_encoder(Path(model)) if isinstance(model, str | os.PathLike) else model
        from ..gallery.open import open_gallery

        rec = Recognizer(encoder, open_gallery(gallery if isinstance(gallery, str) else Path(gallery),
                                               dim=encoder.dim, key=key))
    try:
        service = Service(rec, ServiceDB(service_folder(rec.gallery.path)), limits or Limits())
        if isinstance(rec.gallery, Gallery):
            service.thumbnails = open_thumbnails(service.db, key)
        else:
            service.thumbnails = NoThumbnails(
                f"{type(rec.gallery).__name__} keeps no thumbnails: enroll without retain_thumbnails")
    except BaseException:
        rec.close()
        raise

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        service.close()

    # /docs and /redoc with assets served from the package (fastapi-offline): no CDN, so they
    # render on a machine without internet access
    app = FastAPIOffline(title="megaclass", version="1", description=API_DESCRIPTION, lifespan=lifespan)
    app.state.service = service
    http_errors.install(app)
    for module in (health, classes, recognition, gallery_router, admin, reports):
        app.include_router(module.router)
    console.install(app)  # the operator console at / (static files shipped in the package)
    app.add_middleware(BodySizeLimit, max_bytes=service.limits.max_body_bytes)
    app.add_middleware(MetricsMiddleware, metrics=service.metrics)  # outermost: sees every request
    return app

