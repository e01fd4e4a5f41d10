"""``/v1/identify`` (1:N, images or vectors) and ``/v1/verify`` (1:1)."""

from __future__ import annotations

import math
from typing import Annotated

from fastapi import APIRouter, Depends, File, Form, Query, UploadFile
from starlette.concurrency import run_in_threadpool

from ...errors import ConfigError
from ..deps import authorize, get_service
from ..keys import KeyInfo
from ..schemas import DecisionOut, ErrorOut, IdentifyOut, IdentifyVectorsIn, MatchOut, VerifyOut
from ..service import Service
from ._uploads import decode_all, read_uploads

router = APIRouter(prefix="/v1", tags=["recognition"],
                   responses={401: {"model": ErrorOut}, 403: {"model": ErrorOut}, 413: {"model": ErrorOut},
                              422: {"model": ErrorOut}})
Svc = Annotated[Service, Depends(get_service)]
Reader = Annotated[KeyInfo, Depends(authorize("reader", "identify"))]


def _out(decisions, threshold) -> IdentifyOut:
    return IdentifyOut(threshold=threshold, results=[
        DecisionOut(label=d.label, known=d.known, score=d.score if math.isfinite(d.score) else None,
                    candidates=[MatchOut(label=m.label, score=m.score) for m in d.candidates])
        for d in decisions])


def _describe(decisions):
    known = sum(d.known for d in decisions)
    return [d.label for d in decisions], f"{known} known, {len(decisions) - known} unknown"


def _identify(svc: Service, key: KeyInfo, work, n_queries: int) -> IdentifyOut:
    threshold = svc.recognizer.threshold
    decisions = svc.audited(key, "identify", [], work, _describe)
    known = sum(d.known for d in decisions)
    svc.metrics.decision("identify", "known", known)
    svc.metrics.decision("identify", "unknown", len(decisions) - known)
    return _out(decisions, threshold)


def _check_k(svc: Service, k: int) -> None:
    if k > svc.limits.max_k:
        raise ConfigError(f"k={k} is over the limit of {svc.limits.max_k} (max_k)")


@router.post("/identify", response_model=IdentifyOut)
async def identify_images(svc: Svc, key: Reader,
                          files: Annotated[list[UploadFile], File(description="Query images.")],
                          k: Annotated[int, Query(ge=1, description="Candidates per query.")] = 5
                          ) -> IdentifyOut:
    """Identify each image among the enrolled classes; ``label`` is null below the threshold."""
    _check_k(svc, k)
    uploads = await read_uploads(files, svc.limits)

    def work():
        images = decode_all(uploads, svc.limits, svc.recognizer.encoder.input_spec)
        return svc.recognizer.identify(images, k=k)

    return await run_in_threadpool(_identify, svc, key, work, len(uploads))


@router.post("/identify/vectors", response_model=IdentifyOut)
def identify_vectors(body: IdentifyVectorsIn, svc: Svc, key: Reader) -> IdentifyOut:
    """Identify embeddings computed elsewhere (same model) among the enrolled classes."""
    _check_k(svc, body.k)
    svc.limits.check_count("vectors", len(body.vectors))
    import numpy as np

    vectors = np.asarray(body.vectors, dtype=np.float64)
    return _identify(svc, key, lambda: svc.recognizer.identify_vectors(vectors, k=body.k), len(vectors))


@router.post("/verify", response_model=VerifyOut,
             responses={400: {"model": ErrorOut}, 404: {"model": ErrorOut}})
async def verify(svc: Svc, key: Annotated[KeyInfo, Depends(authorize("reader", "verify"))],
                 label: Annotated[str, Form(min_length=1, max_length=256)],
                 file: Annotated[UploadFile, File(description="One image.")]) -> VerifyOut:
    """Does the image belong to ``label`` (1:1)? Scored by the class's best template."""
    uploads = await read_uploads([file], svc.limits)

    def work():
        images = decode_all(uploads, svc.limits, svc.recognizer.encoder.input_spec)
        return svc.recognizer.verify(images, label)

    v = await run_in_threadpool(svc.audited, key, "verify", [label], work,
                                lambda v: ([label], "accepted" if v.accepted else "rejected"))
    svc.metrics.decision("verify", "accepted" if v.accepted else "rejected")
    return VerifyOut(label=v.label, accepted=v.accepted, score=v.score, threshold=v.threshold)
