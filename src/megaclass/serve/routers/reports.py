"""``/v1/whoami``, ``/v1/preview`` and ``/v1/reports/latest``: what the console needs beside
the recognition API (who is signed in, what the model sees, the latest evaluation report)."""

from __future__ import annotations

import base64
import io
from pathlib import Path
from typing import Annotated

import numpy as np
from fastapi import APIRouter, Depends, File, UploadFile
from PIL import Image
from starlette.concurrency import run_in_threadpool
from starlette.responses import HTMLResponse

from ...data.images import to_batch
from ...errors import UnknownLabelError
from ..deps import authorize, get_service
from ..keys import KeyInfo
from ..schemas import REFUSALS, ErrorOut, PreviewOut, WhoAmIOut
from ..service import Service
from ._uploads import decode_all, read_uploads

#: the gallery setting where ``megaclass evaluate --report`` records its latest report
REPORT_SETTING = "last_report"
_E = {"model": ErrorOut}
router = APIRouter(prefix="/v1", tags=["console"], responses=REFUSALS)
Svc = Annotated[Service, Depends(get_service)]
Reader = Annotated[KeyInfo, Depends(authorize("reader"))]
# the report is self-contained HTML (inline styles, data: images): it may run nothing and
# load nothing, even when opened on its own
_REPORT_CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'; sandbox"


@router.get("/whoami", response_model=WhoAmIOut)
def whoami(key: Reader) -> WhoAmIOut:
    """The key this request was sent with: its id, name and role (what the console may show)."""
    return WhoAmIOut(id=key.id, name=key.name, role=key.role)


def _png(chw: np.ndarray) -> str:
    pixels = (chw.transpose(1, 2, 0) * 255).round().clip(0, 255).astype(np.uint8)
    image = Image.fromarray(pixels[:, :, 0] if pixels.shape[2] == 1 else pixels)
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


@router.post("/preview", response_model=PreviewOut, responses={400: _E, 413: _E, 422: _E})
async def preview(svc: Svc, key: Reader,
                  files: Annotated[list[UploadFile], File(description="Images to convert.")]) -> PreviewOut:
    """What the model sees of each image: its input after the model's contract (channels,
    size, resize, polarity), as PNGs. Nothing is stored or embedded."""
    uploads = await read_uploads(files, svc.limits)
    spec = svc.recognizer.encoder.input_spec

    def convert() -> list[str]:
        batch = to_batch(decode_all(uploads, svc.limits, spec), spec=spec).numpy()
        return [_png(x) for x in batch]

    images = await run_in_threadpool(convert)
    return PreviewOut(images=images, size=spec.size, channels=spec.channels)


@router.get("/reports/latest", response_class=HTMLResponse,
            responses={200: {"content": {"text/html": {}}}, 404: _E})
def latest_report(svc: Svc, key: Reader) -> HTMLResponse:
    """The HTML report the latest ``megaclass evaluate --report DIR`` of this gallery wrote
    (404 when there is none, or it was moved). Served inert: no scripts, no outside loads."""
    recorded = svc.gallery.get_setting(REPORT_SETTING) or {}
    path = Path(str(recorded.get("path", "")))
    if not recorded or path.name != "report.html" or not path.is_file():
        raise UnknownLabelError(
            "no evaluation report of this gallery" + (f" ({path} is gone)" if recorded else "")
            + ": write one with `megaclass evaluate -m MODEL -g GALLERY -q QUERIES --report DIR`")

    def read() -> str:
        return path.read_text(encoding="utf-8")

    html = svc.audited(key, "read", [], read, lambda _: ([], f"read the evaluation report of "
                                                              f"{recorded.get('time', '?')}"))
    return HTMLResponse(html, headers={"Content-Security-Policy": _REPORT_CSP,
                                       "X-Report-Time": str(recorded.get("time", ""))})
