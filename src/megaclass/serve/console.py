"""The operator console: a build-free browser front-end served at ``/``.

The console is static files shipped in the package (``serve/static/``: one HTML page,
a stylesheet and plain ES modules, no CDN and no build step) that call the same JSON API
as every other client, with the API key the operator signs in with. The key is kept in
the tab's ``sessionStorage`` only: it is gone when the tab closes and never sent
anywhere but this server's ``/v1`` routes. Roles decide what the page shows (a reader
sees no enroll/erase controls); the API enforces them regardless.

Pages: Identify and Verify, Enroll (with a preview of the model's input, add samples,
erase with typed confirmation), Gallery (classes paged and searchable, counts, model,
index and its measured recall, threshold and calibration, a calibrate action), Audit
(admin, filterable, CSV export) and Reports (the latest ``evaluate --report``).

Every response of the console carries a Content-Security-Policy that allows only this
origin's scripts (no inline script), so a label or a report can never run code in it.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from starlette.responses import FileResponse
from starlette.staticfiles import StaticFiles

STATIC = Path(__file__).with_name("static")
# 'unsafe-inline' styles only: the report iframe (srcdoc, sandboxed without scripts) has
# inline <style>; scripts come from this origin only; images from here, data: and blob:
CSP = ("default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
       "img-src 'self' data: blob:; frame-src 'self'; object-src 'none'; base-uri 'none'; "
       "form-action 'none'; frame-ancestors 'none'")
_HEADERS = {"Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff",
            "Referrer-Policy": "no-referrer", "Cache-Control": "no-cache"}


class _ConsoleFiles(StaticFiles):
    """StaticFiles with the console's security headers on every file."""

    async def get_response(self, path, scope):
        response = await super().get_response(path, scope)
        response.headers.update(_HEADERS)
        return response


def install(app: FastAPI) -> None:
    """Serve the console: ``/`` (the page) and ``/console/...`` (its assets)."""

    @app.get("/", include_in_schema=False)
    def console_page() -> FileResponse:
        return FileResponse(STATIC / "index.html", headers=_HEADERS)

    app.mount("/console", _ConsoleFiles(directory=STATIC), name="console")
