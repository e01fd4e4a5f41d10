"""``/v1/stats`` (the gallery's counts, index, threshold) and ``/v1/calibrate`` (set the threshold)."""

from __future__ import annotations

import warnings
from typing import Annotated, Any

from fastapi import APIRouter, Depends, File, Form, UploadFile
from starlette.concurrency import run_in_threadpool

from ...errors import ConfigError
from ...evaluate.open_set import DEFAULT_TARGET_FPIR
from ...recognizer import CALIBRATION_KEY
from ..deps import authorize, get_service
from ..keys import KeyInfo
from ..schemas import REFUSALS, CalibrationOut, ErrorOut
from ..service import Service
from ._uploads import decode_all

_E = {"model": ErrorOut}
router = APIRouter(prefix="/v1", tags=["gallery"], responses=REFUSALS)
Svc = Annotated[Service, Depends(get_service)]


@router.get("/stats")
def stats(svc: Svc, key: Annotated[KeyInfo, Depends(authorize("reader"))]) -> dict[str, Any]:
    """Classes, templates, dimension, index (with its measured ``recall_at_1`` when tuned), disk
    bytes, threshold (``calibrated: false`` when there is none: identify and verify then need
    ``threshold`` or ``no_threshold``), the calibration it came from (target and achieved FPIR,
    non-mated searches), the decision rule the threshold applies to (``score``, ``cohort:N``;
    ``fused`` for an ensemble) and the model fingerprint."""
    info = svc.gallery.stats()
    info.pop("path", None)  # server-side file layout is not the caller's business
    info["threshold"] = svc.recognizer.threshold
    info["calibrated"] = info["threshold"] is not None
    rule = getattr(svc.recognizer, "decision", None)  # an ensemble decides on its fused score
    info["decision"] = rule.spec if rule is not None else "fused"
    info["calibration"] = svc.gallery.get_setting(CALIBRATION_KEY)
    info["model"] = svc.recognizer.fingerprint
    info["templates_mode"] = svc.recognizer.templates
    return info


@router.post("/calibrate", response_model=CalibrationOut,
             responses={400: _E, 409: _E, 413: _E, 422: _E, 503: _E})
async def calibrate(svc: Svc, key: Annotated[KeyInfo, Depends(authorize("admin", "calibrate"))],
                    files: Annotated[list[UploadFile], File(description=(
                        "Non-mated images: of classes that are NOT enrolled."))],
                    target_fpir: Annotated[float, Form(gt=0, lt=1, description=(
                        "Largest share of non-mated searches to accept."))] = DEFAULT_TARGET_FPIR,
                    allow_few: Annotated[bool, Form(description=(
                        "Accept fewer than 10/FPIR non-mated images (the answer warns, with the "
                        "achieved FPIR's 95 % interval)."))] = False,
                    decision: Annotated[str | None, Form(description=(
                        "What the threshold applies to: 'score' or 'cohort[:N]' (as `megaclass "
                        "calibrate --decision`); default: the rule chosen before, else cohort:20 from "
                        "1,000 classes on and score below."))] = None
                    ) -> CalibrationOut:
    """Set the gallery's threshold so that at most ``target_fpir`` of these non-mated images
    would be accepted (the same as ``megaclass calibrate``); admin only, audited. Every later
    identify and verify uses it."""
    svc.limits.check_count("calibration images", len(files))
    rec = svc.recognizer
    if decision is not None:
        from ...decisions import DecisionRule

        DecisionRule.parse(decision)  # a bad rule: 4xx before reading the uploads
        if not hasattr(rec, "decision"):
            raise ConfigError(f"decision={decision}: an ensemble decides on its fused score")
    extra: dict[str, Any] = {} if decision is None else {"decision": decision}
    uploads = [(f.filename or f"file {i}", await f.read()) for i, f in enumerate(files)]

    def work():
        images = decode_all(uploads, svc.limits, svc.recognizer.encoder.input_spec)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            cal = rec.calibrate(images, target_fpir, allow_few=allow_few, **extra)
        return cal, (str(caught[0].message) if caught else None)

    cal, warning = await run_in_threadpool(
        svc.audited, key, "calibrate", [], work,
        lambda r: ([], f"threshold {r[0].threshold:.4f} for FPIR {r[0].target_fpir:g} "
                       f"from {r[0].n_non_mated} non-mated images"))
    rule = getattr(rec, "decision", None)
    return CalibrationOut(**cal.to_dict(), warning=warning, decision=rule.spec if rule else None)
