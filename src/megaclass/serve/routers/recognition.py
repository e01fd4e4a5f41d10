"""``/v1/identify`` (1:N, images or vectors) and ``/v1/verify`` (1:1).

A decision needs a threshold: the gallery's calibrated one, or ``?threshold=`` given by
the caller, or ``?no_threshold=true`` for candidates only. On a gallery that was never
calibrated, without either, these routes answer 409 NotCalibratedError (they used to
accept every probe).
"""

from __future__ import annotations

import math
from typing import Annotated

import numpy as np
from fastapi import APIRouter, Depends, File, Form, Query, UploadFile
from starlette.concurrency import run_in_threadpool

from ...errors import ConfigError
from ...recognizer import UNSET
from ..deps import authorize, get_service
from ..keys import KeyInfo
from ..schemas import REFUSALS, DecisionOut, ErrorOut, IdentifyOut, IdentifyVectorsIn, MatchOut, VerifyOut
from ..service import Service
from ..thumbnails import data_url
from ._uploads import decode_all, read_uploads

_E = {"model": ErrorOut}
router = APIRouter(prefix="/v1", tags=["recognition"],
                   responses={**REFUSALS, 409: {"model": ErrorOut, "description": "not calibrated"},
                              413: _E, 422: _E, 503: _E})
Svc = Annotated[Service, Depends(get_service)]
Reader = Annotated[KeyInfo, Depends(authorize("reader", "identify"))]
ThresholdQ = Annotated[float | None, Query(
    ge=-1.0, le=1.0, description="Accept threshold on cosine scores (default: the calibrated one).")]
KQuery = Annotated[int | None, Query(ge=1, description="Candidates per query (or `k` in the body).")]
NoThresholdQ = Annotated[bool, Query(
    description="Candidates only: no accept/reject decision (the best candidate is the label).")]
ThumbnailsQ = Annotated[bool, Query(
    description="Add each candidate's first retained thumbnail (a JPEG data URL), when it has one.")]


def _threshold(svc: Service, threshold: float | None, no_threshold: bool) -> float | None:
    """The threshold of this request; NotCalibratedError (409) when there is none."""
    if no_threshold and threshold is not None:
        raise ConfigError("give threshold or no_threshold, not both")
    chosen = None if no_threshold else (UNSET if threshold is None else threshold)
    return svc.recognizer.decision_threshold(chosen)


def _out(decisions, threshold, thumbs: dict[str, bytes]) -> IdentifyOut:
    def match(m) -> MatchOut:
        thumb = thumbs.get(m.label)
        return MatchOut(label=m.label, score=m.score, thumbnail=data_url(thumb) if thumb else None)

    return IdentifyOut(threshold=threshold, results=[
        DecisionOut(label=d.label, known=d.known, score=d.score if math.isfinite(d.score) else None,
                    candidates=[match(m) for m in d.candidates], statistic=d.statistic)
        for d in decisions])


def _describe(decisions):
    known = sum(d.known for d in decisions)
    return [d.label for d in decisions], f"{known} known, {len(decisions) - known} unknown"


def _identify(svc: Service, key: KeyInfo, decide, thumbnails: bool = False) -> IdentifyOut:
    """Run ``decide() -> (threshold, decisions)`` audited; count and shape the decisions."""
    threshold, decisions = svc.audited(key, "identify", [], decide, lambda r: _describe(r[1]))
    known = sum(d.known for d in decisions)
    svc.metrics.decision("identify", "known", known)
    svc.metrics.decision("identify", "unknown", len(decisions) - known)
    thumbs = svc.thumbnails.first([m.label for d in decisions for m in d.candidates]) if thumbnails else {}
    return _out(decisions, threshold, thumbs)


def _check_k(svc: Service, k: int) -> None:
    if k > svc.limits.max_k:
        raise ConfigError(f"k={k} is over the limit of {svc.limits.max_k} (max_k)")


@router.post("/identify", response_model=IdentifyOut, responses={400: _E})
async def identify_images(svc: Svc, key: Reader,
                          files: Annotated[list[UploadFile], File(description="Query images.")],
                          k: Annotated[int, Query(ge=1, description="Candidates per query.")] = 5,
                          threshold: ThresholdQ = None, no_threshold: NoThresholdQ = False,
                          thumbnails: ThumbnailsQ = False) -> IdentifyOut:
    """Identify each image among the enrolled classes; ``label`` is null below the threshold."""
    _check_k(svc, k)
    uploads = await read_uploads(files, svc.limits)

    def decide():
        thr = _threshold(svc, threshold, no_threshold)  # refused before any decoding
        return thr, svc.recognizer.identify(decode_all(uploads, svc.limits), k=k, threshold=thr)

    return await run_in_threadpool(_identify, svc, key, decide, thumbnails)


@router.post("/identify/vectors", response_model=IdentifyOut)
def identify_vectors(body: IdentifyVectorsIn, svc: Svc, key: Reader,
                     k: KQuery = None,
                     threshold: ThresholdQ = None, no_threshold: NoThresholdQ = False) -> IdentifyOut:
    """Identify embeddings computed elsewhere (same model) among the enrolled classes."""
    if k is not None and "k" in body.model_fields_set and body.k != k:
        raise ConfigError(f"k given twice with different values (query {k}, body {body.k})")
    k = body.k if k is None else k
    _check_k(svc, k)
    svc.limits.check_count("vectors", len(body.vectors))
    vectors = np.asarray(body.vectors, dtype=np.float64)

    def decide():
        thr = _threshold(svc, threshold, no_threshold)
        return thr, svc.recognizer.identify_vectors(vectors, k=k, threshold=thr)

    return _identify(svc, key, decide)


@router.post("/verify", response_model=VerifyOut, responses={400: _E, 404: _E})
async def verify(svc: Svc, key: Annotated[KeyInfo, Depends(authorize("reader", "verify"))],
                 label: Annotated[str, Form(min_length=1, max_length=256)],
                 file: Annotated[UploadFile, File(description="One image.")],
                 threshold: ThresholdQ = None, no_threshold: NoThresholdQ = False,
                 thumbnails: ThumbnailsQ = False) -> VerifyOut:
    """Does the image belong to ``label`` (1:1)? Scored by the class's best template."""
    uploads = await read_uploads([file], svc.limits)

    def work():
        thr = _threshold(svc, threshold, no_threshold)
        return svc.recognizer.verify(decode_all(uploads, svc.limits), label, threshold=thr)

    v = await run_in_threadpool(svc.audited, key, "verify", [label], work,
                                lambda v: ([label], "accepted" if v.accepted else "rejected"))
    svc.metrics.decision("verify", "accepted" if v.accepted else "rejected")
    thumb = svc.thumbnails.first([v.label]).get(v.label) if thumbnails else None
    return VerifyOut(label=v.label, accepted=v.accepted, score=v.score, threshold=v.threshold,
                     statistic=v.statistic, thumbnail=data_url(thumb) if thumb else None)
