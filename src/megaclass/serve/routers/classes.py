"""``/v1/classes``: enroll (images or vectors), add samples/templates, read, list, erase."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, File, Form, Path, Query, UploadFile
from starlette.concurrency import run_in_threadpool

from ...recognizer import SAMPLES_META, public_meta
from ..deps import audit_labels, authorize, get_service
from ..keys import KeyInfo
from ..schemas import (
    REFUSALS,
    ClassItem,
    ClassListOut,
    ClassOut,
    EnrollOut,
    EnrollVectorsIn,
    EraseOut,
    ErrorOut,
    TemplatesIn,
)
from ..service import Service
from ..thumbnails import data_url
from ._uploads import decode_all, parse_meta, read_uploads

_E = {"model": ErrorOut}
router = APIRouter(prefix="/v1/classes", tags=["classes"],
                   responses={**REFUSALS, 413: {"model": ErrorOut},
                              422: {"model": ErrorOut}})
LabelPath = Annotated[str, Path(min_length=1, max_length=256, description="Class label.")]
Svc = Annotated[Service, Depends(get_service)]
RetainForm = Annotated[bool, Form(description=(
    "Keep small thumbnails of the first images (sealed with the gallery key when the gallery is "
    "encrypted), shown beside candidates in identify answers and the console. Off by default."))]


def _keep_thumbnails(svc: Service, label: str, images: list, retain: bool, replace: bool) -> None:
    """After a successful write: keep thumbnails when asked; a replacing enroll drops the old ones."""
    if retain:
        svc.thumbnails.put(label, images, replace=replace)
    elif replace:
        svc.thumbnails.drop(label)


def _check_retention(svc: Service, retain: bool) -> None:
    if retain and svc.thumbnails.unavailable:
        from ...errors import ConfigError

        raise ConfigError(svc.thumbnails.unavailable)


@router.get("", response_model=ClassListOut)
def list_classes(svc: Svc, key: Annotated[KeyInfo, Depends(authorize("reader"))],
                 offset: Annotated[int, Query(ge=0)] = 0,
                 limit: Annotated[int, Query(ge=1, le=10_000)] = 1000,
                 q: Annotated[str | None, Query(max_length=256, description=(
                     "Only labels containing this text (case-insensitive)."))] = None,
                 detail: Annotated[bool, Query(description=(
                     "Also each listed class's template, sample and thumbnail counts (`items`)."))] = False
                 ) -> ClassListOut:
    """Enrolled labels in enrollment order, one page at a time, optionally filtered by text."""
    labels = svc.gallery.labels()
    if q:
        needle = q.casefold()
        labels = [label for label in labels if needle in label.casefold()]
    page = labels[offset:offset + limit]
    items = None
    if detail:
        thumbs = svc.thumbnails.counts(page)
        items = []
        for label in page:
            samples = svc.gallery.class_meta(label).get(SAMPLES_META)
            items.append(ClassItem(label=label, templates=len(svc.gallery.templates(label)),
                                   samples=samples if isinstance(samples, int) else None,
                                   thumbnails=thumbs.get(label, 0)))
    return ClassListOut(total=len(labels), labels=page, items=items)


@router.post("", response_model=EnrollOut, status_code=201, responses={400: _E, 409: _E, 503: _E})
async def enroll_images(svc: Svc, key: Annotated[KeyInfo, Depends(authorize("enroller", "enroll"))],
                        label: Annotated[str, Form(min_length=1, max_length=256)],
                        files: Annotated[list[UploadFile], File(description="The class's images.")],
                        replace: Annotated[bool, Form()] = False,
                        meta: Annotated[str | None, Form(description="A JSON object.")] = None,
                        retain_thumbnails: RetainForm = False) -> EnrollOut:
    """Enroll a new class from images (all or nothing): decode, embed, store its template."""
    uploads = await read_uploads(files, svc.limits)

    def work():
        _check_retention(svc, retain_thumbnails)
        images = decode_all(uploads, svc.limits, svc.recognizer.encoder.input_spec)
        n = svc.recognizer.enroll(label, images, parse_meta(meta), replace=replace)
        _keep_thumbnails(svc, label, images, retain_thumbnails, replace)  # only if the class still exists
        return n

    n = await run_in_threadpool(svc.audited, key, "enroll", [label], work,
                                lambda n: ([label], f"enrolled from {n} images"), 201)
    return EnrollOut(label=label, samples=n, gallery_classes=len(svc.gallery))


@router.post("/from-vectors", response_model=EnrollOut, status_code=201, responses={409: _E, 503: _E})
def enroll_vectors(body: EnrollVectorsIn, svc: Svc,
                   key: Annotated[KeyInfo, Depends(authorize("enroller", "enroll"))]) -> EnrollOut:
    """Enroll a new class whose templates are the given embeddings (validated by the gallery)."""
    svc.limits.check_count("vectors", len(body.vectors))

    def work():
        n = svc.gallery.enroll(body.label, body.vectors, body.meta, replace=body.replace)
        _keep_thumbnails(svc, body.label, [], False, body.replace)  # replaced: old images go
        return n

    n = svc.audited(key, "enroll", [body.label], work, lambda n: ([body.label], f"enrolled from {n} vectors"),
                    201)
    return EnrollOut(label=body.label, samples=n, gallery_classes=len(svc.gallery))


@router.post("/{label:path}/samples", response_model=EnrollOut, responses={400: _E, 404: _E, 503: _E})
async def add_samples(label: LabelPath, svc: Svc,
                      key: Annotated[KeyInfo, Depends(authorize("enroller", "add"))],
                      files: Annotated[list[UploadFile], File(description="More images of the class.")],
                      retain_thumbnails: RetainForm = False) -> EnrollOut:
    """Add images to an enrolled class (its template is updated)."""
    uploads = await read_uploads(files, svc.limits)

    def work():
        _check_retention(svc, retain_thumbnails)
        images = decode_all(uploads, svc.limits, svc.recognizer.encoder.input_spec)
        with svc.class_write_lock:
            n = svc.recognizer.add_samples(label, images)
            _keep_thumbnails(svc, label, images, retain_thumbnails, False)
        return n

    n = await run_in_threadpool(svc.audited, key, "add", [label], work,
                                lambda n: ([label], f"added {n} images"))
    return EnrollOut(label=label, samples=n, gallery_classes=len(svc.gallery))


@router.post("/{label:path}/templates", response_model=EnrollOut, responses={404: _E, 503: _E})
def add_templates(label: LabelPath, body: TemplatesIn, svc: Svc,
                  key: Annotated[KeyInfo, Depends(authorize("enroller", "add"))]) -> EnrollOut:
    """Add embeddings as extra templates of an enrolled class."""
    svc.limits.check_count("vectors", len(body.vectors))

    def work():
        with svc.class_write_lock:
            return svc.gallery.add_templates(label, body.vectors)

    n = svc.audited(key, "add", [label], work, lambda n: ([label], f"added {n} templates"))
    return EnrollOut(label=label, samples=n, gallery_classes=len(svc.gallery))


@router.get("/{label:path}", response_model=ClassOut, responses={404: {"model": ErrorOut}})
def get_class(label: LabelPath, svc: Svc, key: Annotated[KeyInfo, Depends(authorize("reader"))],
              thumbnails: Annotated[bool, Query(description=(
                  "Include the retained thumbnails (data URLs); such a read is audited."))] = False
              ) -> ClassOut:
    """A class's metadata and template count (never its vectors), optionally its thumbnails."""
    meta = svc.gallery.class_meta(label)
    samples = meta.get(SAMPLES_META)
    images = None
    if thumbnails:
        images = svc.audited(key, "read", [label], lambda: svc.thumbnails.of(label),
                             lambda t: ([label], f"read {len(t)} thumbnails"))
    return ClassOut(label=label, templates=len(svc.gallery.templates(label)), meta=public_meta(meta),
                    samples=samples if isinstance(samples, int) else None,
                    thumbnails=None if images is None else [data_url(t) for t in images])


@router.delete("/{label:path}", response_model=EraseOut, responses={404: _E, 503: _E})
def erase(label: LabelPath, svc: Svc, key: Annotated[KeyInfo, Depends(authorize("enroller", "erase"))]
          ) -> EraseOut:
    """Erase a class and all its templates (store and index)."""

    def work():
        with svc.class_write_lock:
            return svc.recognizer.erase(label)

    # the erase rewrote the label into its salted hash in the audit log: this row too, and
    # the row of a failed erase (an unknown label is still a name someone wants forgotten)
    tagged = audit_labels(svc, "erase", [label])
    n = svc.audited(key, "erase", tagged, work, lambda n: (tagged, f"erased {n} templates"))
    return EraseOut(label=label, templates_removed=n, gallery_classes=len(svc.gallery))
