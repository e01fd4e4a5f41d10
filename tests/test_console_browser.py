"""The operator console in a real browser (issue 12 part 2): Playwright drives the system's
Debian ``chromium`` (never a downloaded browser) against a real ``megaclass serve`` on
loopback with the small trained model of conftest.

Covered: sign in (the key stays in the tab's sessionStorage), enroll from files with the
model-input preview and thumbnails, identify with the right candidate first, verify,
calibrate from non-mated files, the gallery's classes and search, erase with typed
confirmation and the class gone, the audit log and its CSV export, the latest evaluation
report, a reader who sees no enroll/erase/audit, and /docs (Swagger UI) rendering offline.
No page may log a JavaScript error or a CSP violation.

``MEGACLASS_SCREENSHOTS=DIR`` saves a screenshot of each page there (the README's come from
``MEGACLASS_SCREENSHOTS=docs/images``). ``MEGACLASS_CHROMIUM`` names another chromium binary.
"""

from __future__ import annotations

import base64
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("uvicorn")
sync_api = pytest.importorskip("playwright.sync_api",
                               reason="playwright is not installed (pip install -e '.[dev]')")

from _serve_helpers import glyph_pngs  # noqa: E402
from megaclass.serve.db import ServiceDB  # noqa: E402
from megaclass.serve.keys import KeyStore  # noqa: E402
from megaclass.serve.process import ServerProcess  # noqa: E402

# generous waits: on a loaded 2-core box one enroll (decode + embed + commit) can take seconds;
# a passing run does not wait for them (every wait ends as soon as its condition holds)
sync_api.expect.set_options(timeout=60_000)
CHROMIUM = (os.environ.get("MEGACLASS_CHROMIUM") or shutil.which("chromium")
            or shutil.which("chromium-browser"))
SHOTS = os.environ.get("MEGACLASS_SCREENSHOTS")
ENROLLED = (31, 32, 33)
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(CHROMIUM is None, reason=(
        "no chromium found (apt-get install -y chromium, or set MEGACLASS_CHROMIUM): "
        "the console's browser tests cannot run")),
]


def _write(directory: Path, name: str, pngs: list[bytes]) -> list[str]:
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, data in enumerate(pngs):
        path = directory / f"{name}-{i}.png"
        path.write_bytes(data)
        paths.append(str(path))
    return paths


@pytest.fixture(scope="module")
def site(tiny_model_dir, tmp_path_factory):
    """A served gallery with three keys, and image files to upload."""
    from megaclass import Encoder, Gallery

    root = tmp_path_factory.mktemp("console")
    gallery = root / "gallery"
    Gallery.open(gallery, dim=Encoder.load(tiny_model_dir).dim).close()
    with ServiceDB(gallery) as db:
        tokens = {role: KeyStore(db).add(f"{role} desk", role)[1] for role in ("reader", "enroller", "admin")}
    images = root / "images"
    data = {
        "enroll": {c: _write(images / "enroll", f"glyph-{c}", glyph_pngs(c, 4, seed=1)) for c in ENROLLED},
        "query": {c: _write(images / "query", f"query-{c}", glyph_pngs(c, 1, seed=4))[0] for c in ENROLLED},
        # 100 never-enrolled images: enough for a calibration at FPIR 10 % (10/FPIR)
        "non_mated": [p for c in range(200, 225) for p in _write(images / "nm", f"nm-{c}", glyph_pngs(c, 4))],
    }
    with ServerProcess(tiny_model_dir, gallery, log=root / "server.log", startup_timeout=240) as server:
        yield {"url": server.url, "tokens": tokens, "files": data, "gallery": gallery,
               "model": tiny_model_dir, "root": root}


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        yield browser
        browser.close()


@pytest.fixture()
def page(browser, site):
    context = browser.new_context(viewport={"width": 1280, "height": 860}, accept_downloads=True)
    page = context.new_page()
    page.set_default_timeout(60_000)
    problems: list[str] = []
    page.on("pageerror", lambda exc: problems.append(f"page error: {exc}"))
    page.on("console", lambda msg: problems.append(f"console {msg.type}: {msg.text}")
            if msg.type == "error" and "status of 4" not in msg.text else None)  # 4xx the page shows
    yield page
    context.close()
    assert problems == []  # no JavaScript error, no CSP violation


def shot(page, name: str, full_page: bool = False) -> None:
    if SHOTS:
        Path(SHOTS).mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(Path(SHOTS) / f"console-{name}.png"), full_page=full_page)


def sign_in(page, site, role: str) -> None:
    page.goto(site["url"] + "/")
    page.fill("#signin-key", site["tokens"][role])
    page.click("#signin-form button[type=submit]")
    sync_api.expect(page.locator("#who-text")).to_contain_text(role)


def go(page, name: str) -> None:
    page.click(f'nav a[data-page="{name}"]')
    sync_api.expect(page.locator(f"#page-{name}")).to_be_visible()


def enroll(page, site, c: int, *, preview: bool = False) -> None:
    page.fill("#enroll-label", f"glyph-{c}")
    page.set_input_files("#enroll-files", site["files"]["enroll"][c])
    page.check("#enroll-thumbs")
    if preview:
        page.click("#enroll-preview-btn")
        sync_api.expect(page.locator("[data-testid=model-input]")).to_have_count(4)
        shot(page, "enroll")
    page.click("#enroll-form button[type=submit]")
    sync_api.expect(page.locator("#flash")).to_contain_text(f"Enrolled glyph-{c} from 4 photos")


def drop(page, zone: str, path: str) -> None:
    """Drag a file onto a drop zone, as from a file manager (a real DataTransfer and drop event)."""
    data = base64.b64encode(Path(path).read_bytes()).decode()
    page.evaluate("""([zone, name, b64]) => {
        const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
        const transfer = new DataTransfer();
        transfer.items.add(new File([bytes], name, { type: "image/png" }));
        const event = new DragEvent("drop", { dataTransfer: transfer, bubbles: true, cancelable: true });
        document.querySelector(zone).dispatchEvent(event);
    }""", [zone, Path(path).name, data])


def identify(page, site, classes) -> list:
    go(page, "identify")
    page.set_input_files("#identify-files", [site["files"]["query"][c] for c in classes])
    page.click("#identify-form button[type=submit]")
    results = page.locator("[data-testid=identify-result]")
    sync_api.expect(results).to_have_count(len(classes))
    return [results.nth(i) for i in range(len(classes))]


def test_operator_enrolls_identifies_calibrates_erases_and_audits(page, site):
    page.goto(site["url"] + "/")
    shot(page, "signin")
    page.fill("#signin-key", "mck_00000000.not-a-real-key-at-all-xxxx")
    page.click("#signin-form button[type=submit]")
    sync_api.expect(page.locator("#flash")).to_contain_text("unknown or revoked")
    sign_in(page, site, "admin")
    assert page.evaluate("localStorage.length") == 0  # the key is kept in this tab only
    assert page.evaluate("sessionStorage.getItem('megaclass.apiKey')") == site["tokens"]["admin"]

    go(page, "enroll")
    for i, c in enumerate(ENROLLED):
        enroll(page, site, c, preview=i == 0)

    # uncalibrated: candidates only, said so; the right class first, with its enrolled thumbnail
    first = identify(page, site, [32])[0]
    sync_api.expect(page.locator("#identify-note")).to_contain_text("not calibrated")
    sync_api.expect(first.locator(".cand .label").first).to_have_text("glyph-32")
    sync_api.expect(first.locator(".cand img.thumb").first).to_be_visible()

    go(page, "gallery")
    sync_api.expect(page.locator('[data-field="classes"]')).to_have_text("3")
    sync_api.expect(page.locator("#classes-table tbody tr")).to_have_count(3)
    page.fill("#classes-q", "33")
    page.click("#classes-form button[type=submit]")
    sync_api.expect(page.locator("#classes-table tbody tr")).to_have_count(1)
    sync_api.expect(page.locator("#classes-table tbody tr td").first).to_have_text("glyph-33")
    page.set_input_files("#calibrate-files", site["files"]["non_mated"])
    page.fill("#calibrate-fpir", "0.1")
    page.click("#calibrate-form button[type=submit]")
    sync_api.expect(page.locator("#flash")).to_contain_text("from 100 non-mated photos")
    sync_api.expect(page.locator('[data-field="threshold"]')).to_contain_text("calibrated for FPIR 0.1")
    page.fill("#classes-q", "")
    page.click("#classes-form button[type=submit]")
    sync_api.expect(page.locator("#classes-table tbody tr")).to_have_count(3)
    shot(page, "gallery", full_page=True)

    # calibrated: a decision against the threshold line
    results = identify(page, site, [32, 33])
    for result, c in zip(results, (32, 33), strict=True):
        sync_api.expect(result.locator(".cand .label").first).to_have_text(f"glyph-{c}")
        sync_api.expect(result.locator(".bar .thr").first).to_be_visible()
    sync_api.expect(page.locator("#identify-note")).to_contain_text("calibrated for FPIR 0.1")
    shot(page, "identify", full_page=True)

    go(page, "verify")
    page.fill("#verify-label", "glyph-33")
    drop(page, '[data-input="verify-file"]', site["files"]["query"][33])  # dragged, not chosen
    sync_api.expect(page.locator('[data-input="verify-file"] .chosen li')).to_have_count(1)
    page.click("#verify-form button[type=submit]")
    sync_api.expect(page.locator("[data-testid=verify-result] .decision")).to_contain_text("glyph-33")
    shot(page, "verify")

    # erase needs the label typed twice; then the class is gone everywhere
    go(page, "enroll")
    page.fill("#erase-label", "glyph-31")
    page.fill("#erase-confirm", "glyph-3")
    sync_api.expect(page.locator("#erase-btn")).to_be_disabled()
    page.fill("#erase-confirm", "glyph-31")
    page.click("#erase-btn")
    sync_api.expect(page.locator("#flash")).to_contain_text("Erased glyph-31")
    go(page, "gallery")
    sync_api.expect(page.locator("#classes-table tbody tr")).to_have_count(2)
    sync_api.expect(page.locator("#classes-table")).not_to_contain_text("glyph-31")
    result = identify(page, site, [31])[0]
    sync_api.expect(result.locator(".cand .label").first).to_be_visible()
    assert "glyph-31" not in result.locator(".cand .label").all_inner_texts()

    # reports: the latest `megaclass evaluate --report` of this gallery
    go(page, "reports")
    sync_api.expect(page.locator("#reports-note")).to_contain_text("no evaluation report")
    out = site["root"] / "report"
    subprocess.run([sys.executable, "-m", "megaclass.cli", "evaluate", "-m", str(site["model"]),
                    "-g", str(site["gallery"]), "-q", "glyphs:32-33", "--non-mated", "glyphs:300-340",
                    "--report", str(out), "--quiet"], check=True, capture_output=True, timeout=300)
    go(page, "identify")
    go(page, "reports")
    sync_api.expect(page.frame_locator("#reports-frame").locator("h1")).to_contain_text("evaluation")
    shot(page, "reports")

    # audit: the erase is there under the label's salted hash; filter; CSV export
    go(page, "audit")
    page.select_option("#audit-op", "erase")
    page.fill("#audit-label", "glyph-31")
    page.click("#audit-form button[type=submit]")
    rows = page.locator("#audit-table tbody tr")
    sync_api.expect(rows).to_have_count(1)
    sync_api.expect(rows.first).to_contain_text("erased:")
    sync_api.expect(rows.first).not_to_contain_text("glyph-31")
    page.select_option("#audit-op", "")
    page.fill("#audit-label", "")
    page.click("#audit-form button[type=submit]")
    sync_api.expect(page.locator("#audit-table tbody tr").first).to_be_visible()
    shot(page, "audit")
    with page.expect_download() as download:
        page.click("#audit-csv")
    text = Path(download.value.path()).read_text()
    assert text.startswith("id,time,key_id,operation,labels,decision,status")
    assert "calibrate" in text and "glyph-31" not in text

    other = page.context.new_page()  # sessionStorage is per tab: a new tab asks again
    other.goto(site["url"] + "/")
    sync_api.expect(other.locator("#page-signin")).to_be_visible()
    page.click("#sign-out")
    sync_api.expect(page.locator("#page-signin")).to_be_visible()
    assert page.evaluate("sessionStorage.length") == 0


def test_reader_sees_no_enroll_erase_or_audit_and_docs_render(page, site):
    sign_in(page, site, "reader")
    for name in ("identify", "verify", "gallery", "reports"):
        sync_api.expect(page.locator(f'nav a[data-page="{name}"]')).to_be_visible()
    for name in ("enroll", "audit"):
        sync_api.expect(page.locator(f'nav a[data-page="{name}"]')).to_be_hidden()
    page.goto(site["url"] + "/#enroll")  # typed by hand: the identify page instead
    sync_api.expect(page.locator("#page-identify")).to_be_visible()
    sync_api.expect(page.locator("#page-enroll")).to_be_hidden()
    sync_api.expect(page.locator("#erase-form")).to_be_hidden()
    go(page, "gallery")
    sync_api.expect(page.locator("#calibrate-box")).to_be_hidden()

    page.goto(site["url"] + "/docs")  # Swagger UI from the package's own assets (no CDN)
    sync_api.expect(page.locator(".swagger-ui .info .title")).to_contain_text("megaclass")
    sync_api.expect(page.locator(".opblock-summary-path", has_text="/v1/calibrate")).to_be_visible()
    shot(page, "docs")


def test_identify_under_the_cohort_rule_explains_the_statistic_and_drops_the_cosine_line(page, site):
    """Calibrated for the cohort rule (over HTTP), the console says what was thresholded and draws
    no threshold line on the cosine bars (the threshold is not a cosine then)."""
    import httpx

    admin = {"Authorization": f"Bearer {site['tokens']['admin']}"}
    nm = [("files", (Path(p).name, Path(p).read_bytes(), "image/png"))
          for p in site["files"]["non_mated"][:60]]
    r = httpx.post(site["url"] + "/v1/calibrate", headers=admin, files=nm, timeout=120,
                   data={"allow_few": "true", "target_fpir": "0.1", "decision": "cohort:1"})
    assert r.status_code == 200 and r.json()["decision"] == "cohort:1", r.text
    sign_in(page, site, "admin")
    result = identify(page, site, [32])[0]
    sync_api.expect(page.locator("#identify-note")).to_contain_text("cohort rule")
    sync_api.expect(result.locator(".decision")).to_contain_text("above the mean of its nearest rivals")
    sync_api.expect(result.locator(".cand .label").first).to_have_text("glyph-32")
    assert result.locator(".thr").count() == 0
