"""``/v1/stats``: the gallery's counts and sizes, and its threshold."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends

from ..deps import authorize, get_service
from ..keys import KeyInfo
from ..schemas import ErrorOut
from ..service import Service

router = APIRouter(prefix="/v1", tags=["gallery"],
                   responses={401: {"model": ErrorOut}, 403: {"model": ErrorOut}})


@router.get("/stats")
def stats(svc: Annotated[Service, Depends(get_service)],
          key: Annotated[KeyInfo, Depends(authorize("reader"))]) -> dict[str, Any]:
    """Classes, templates, dimension, index, disk bytes, threshold (``calibrated: false`` when
    there is none: identify and verify then need ``threshold`` or ``no_threshold``) and
    model fingerprint."""
    info = svc.gallery.stats()
    info.pop("path", None)  # server-side file layout is not the caller's business
    info["threshold"] = svc.recognizer.threshold
    info["calibrated"] = info["threshold"] is not None
    info["model"] = svc.recognizer.fingerprint
    info["templates_mode"] = svc.recognizer.templates
    return info
