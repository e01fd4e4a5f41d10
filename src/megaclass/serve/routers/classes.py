"""``/v1/classes``: enroll (images or vectors), add samples/templates, read, list, erase."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, File, Form, Path, Query, UploadFile
from starlette.concurrency import run_in_threadpool

from ...recognizer import SAMPLES_META, public_meta
from ..deps import authorize, get_service
from ..keys import KeyInfo
from ..schemas import ClassListOut, ClassOut, EnrollOut, EnrollVectorsIn, EraseOut, ErrorOut, TemplatesIn
from ..service import Service
from ._uploads import decode_all, parse_meta, read_uploads

_E = {"model": ErrorOut}
router = APIRouter(prefix="/v1/classes", tags=["classes"],
                   responses={401: {"model": ErrorOut}, 403: {"model": ErrorOut}, 413: {"model": ErrorOut},
                              422: {"model": ErrorOut}})
LabelPath = Annotated[str, Path(min_length=1, max_length=256, description="Class label.")]
Svc = Annotated[Service, Depends(get_service)]


@router.get("", response_model=ClassListOut)
def list_classes(svc: Svc, key: Annotated[KeyInfo, Depends(authorize("reader"))],
                 offset: Annotated[int, Query(ge=0)] = 0,
                 limit: Annotated[int, Query(ge=1, le=10_000)] = 1000) -> ClassListOut:
    """Enrolled labels in enrollment order, one page at a time."""
    labels = svc.gallery.labels()
    return ClassListOut(total=len(labels), labels=labels[offset:offset + limit])


@router.post("", response_model=EnrollOut, status_code=201, responses={400: _E, 409: _E, 503: _E})
async def enroll_images(svc: Svc, key: Annotated[KeyInfo, Depends(authorize("enroller", "enroll"))],
                        label: Annotated[str, Form(min_length=1, max_length=256)],
                        files: Annotated[list[UploadFile], File(description="The class's images.")],
                        replace: Annotated[bool, Form()] = False,
                        meta: Annotated[str | None, Form(description="A JSON object.")] = None) -> EnrollOut:
    """Enroll a new class from images (all or nothing): decode, embed, store its template."""
    uploads = await read_uploads(files, svc.limits)

    def work():
        images = decode_all(uploads, svc.limits, svc.recognizer.encoder.input_spec)
        return svc.recognizer.enroll(label, images, parse_meta(meta), replace=replace)

    n = await run_in_threadpool(svc.audited, key, "enroll", [label], work,
                                lambda n: ([label], f"enrolled from {n} images"), 201)
    return EnrollOut(label=label, samples=n, gallery_classes=len(svc.gallery))


@router.post("/from-vectors", response_model=EnrollOut, status_code=201, responses={409: _E, 503: _E})
def enroll_vectors(body: EnrollVectorsIn, svc: Svc,
                   key: Annotated[KeyInfo, Depends(authorize("enroller", "enroll"))]) -> EnrollOut:
    """Enroll a new class whose templates are the given embeddings (validated by the gallery)."""
    svc.limits.check_count("vectors", len(body.vectors))
    n = svc.audited(key, "enroll", [body.label],
                    lambda: svc.gallery.enroll(body.label, body.vectors, body.meta, replace=body.replace),
                    lambda n: ([body.label], f"enrolled from {n} vectors"), 201)
    return EnrollOut(label=body.label, samples=n, gallery_classes=len(svc.gallery))


@router.post("/{label:path}/samples", response_model=EnrollOut, responses={400: _E, 404: _E, 503: _E})
async def add_samples(label: LabelPath, svc: Svc,
                      key: Annotated[KeyInfo, Depends(authorize("enroller", "add"))],
                      files: Annotated[list[UploadFile], File(description="More images of the class.")]
                      ) -> EnrollOut:
    """Add images to an enrolled class (its template is updated)."""
    uploads = await read_uploads(files, svc.limits)

    def work():
        images = decode_all(uploads, svc.limits, svc.recognizer.encoder.input_spec)
        with svc.class_write_lock:
            return svc.recognizer.add_samples(label, images)

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
def get_class(label: LabelPath, svc: Svc, key: Annotated[KeyInfo, Depends(authorize("reader"))]) -> ClassOut:
    """A class's metadata and template count (never its vectors)."""
    meta = svc.gallery.class_meta(label)
    samples = meta.get(SAMPLES_META)
    return ClassOut(label=label, templates=len(svc.gallery.templates(label)), meta=public_meta(meta),
                    samples=samples if isinstance(samples, int) else None)


@router.delete("/{label:path}", response_model=EraseOut, responses={404: _E, 503: _E})
def erase(label: LabelPath, svc: Svc, key: Annotated[KeyInfo, Depends(authorize("enroller", "erase"))]
          ) -> EraseOut:
    """Erase a class and all its templates (store and index)."""

    def work():
        with svc.class_write_lock:
            return svc.recognizer.erase(label)

    # the erase rewrote the label into its salted hash in the audit log: this row too
    n = svc.audited(key, "erase", [label], work,
                    lambda n: ([svc.gallery.erased_tag(label)], f"erased {n} templates"))
    return EraseOut(label=label, templates_removed=n, gallery_classes=len(svc.gallery))
