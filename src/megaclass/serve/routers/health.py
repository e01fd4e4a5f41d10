"""``/healthz`` (the process answers), ``/readyz`` (model and gallery usable), ``/metrics``."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends
from starlette.responses import JSONResponse, PlainTextResponse

from ..deps import get_service
from ..metrics import gallery_gauges
from ..service import Service

router = APIRouter(tags=["health"])


@router.get("/healthz")
def healthz() -> dict[str, str]:
    """Liveness: 200 while the process serves requests."""
    return {"status": "ok"}


@router.get("/readyz", responses={503: {"description": "not ready"}})
def readyz(svc: Annotated[Service, Depends(get_service)]):
    """Readiness: 200 when the gallery answers and the model is loaded, else 503.

    ``calibrated: false`` says that identify/verify will refuse (409) until the gallery is
    calibrated or callers give a threshold; the service is still ready (enroll works)."""
    try:
        if svc.closed:
            raise RuntimeError("service is shutting down")
        classes = len(svc.gallery)
        calibrated = svc.recognizer.calibrated
    except Exception as exc:  # noqa: BLE001 - any failure means "not ready"
        return JSONResponse({"status": "not ready", "reason": str(exc)}, status_code=503)
    return {"status": "ready", "classes": classes, "calibrated": calibrated}


@router.get("/metrics", response_class=PlainTextResponse)
def metrics(svc: Annotated[Service, Depends(get_service)]) -> PlainTextResponse:
    """Prometheus text format: request counts and latencies, decisions, gallery size and
    recall (tuned, and live on served queries)."""
    try:
        gallery = gallery_gauges(svc.gallery)
    except Exception:  # noqa: BLE001 - a closed gallery still lets metrics be scraped
        gallery = {"classes": 0, "templates": 0}
    return PlainTextResponse(svc.metrics.render(gallery), media_type="text/plain; version=0.0.4")
