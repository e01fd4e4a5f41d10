"""A self-contained HTML report (plots embedded as base64 PNG) plus ``metrics.json``.

The page opens from disk in any browser, without a server or network: no scripts, no
external CSS or fonts. Undefined metrics are printed as "undefined" with their reason.

Example
-------
>>> ev = evaluate_recognizer(rec, images, labels, non_mated=other)      # doctest: +SKIP
>>> write_report("out/", ev, images=images)                              # doctest: +SKIP
PosixPath('out/report.html')
"""

from __future__ import annotations

import base64
import html
import json
import time
from pathlib import Path

import numpy as np

from . import plots
from .pipeline import Evaluation

_CSS = """body{font-family:system-ui,sans-serif;margin:24px;max-width:1150px;color:#222}
h1{margin-bottom:0}h2{border-bottom:1px solid #ccc;padding-bottom:4px;margin-top:28px}
table{border-collapse:collapse;margin:8px 0}td,th{border:1px solid #ddd;padding:3px 8px;
text-align:right}th{background:#f3f3f3}td.l,th.l,td.i{text-align:left}.u{color:#a33}
.grid{display:flex;flex-wrap:wrap;gap:12px}.grid img{border:1px solid #eee}
.thumb{image-rendering:pixelated;width:48px;height:48px;margin:1px;background:#000}
.sub{color:#666}figure{margin:0}figcaption{font-size:.85em;color:#555;max-width:550px}"""

_CAPTIONS = {
    "det": "DET: false negative against false positive rate on normal-deviate axes (lower left is better).",
    "roc": "ROC: true against false accept rate (log axis, down to 1 / non-matching comparisons), "
           "with TAR@FAR, FNIR@FPIR points and the EER.",
}


def _img(png: bytes, alt: str, cls: str = "") -> str:
    data = base64.b64encode(png).decode("ascii")
    c = f' class="{cls}"' if cls else ""
    return f'<img{c} alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def _figure(name: str, png: bytes) -> str:
    img = _img(png, f"{name} plot")
    if name not in _CAPTIONS:
        return img
    return f"<figure>{img}<figcaption>{html.escape(_CAPTIONS[name])}</figcaption></figure>"


def _fmt(v, pct: bool = False) -> str:
    if v is None:
        return '<span class="u">undefined</span>'
    if isinstance(v, float):
        return f"{v:.2%}" if pct else f"{v:.4g}"
    return html.escape(str(v))


def _table(header: list[str], rows: list[list[str]]) -> str:
    h = "".join(f'<th class="{"l" if i == 0 else ""}">{html.escape(c)}</th>' for i, c in enumerate(header))
    def cls(i: int, c: str) -> str:
        return "l" if i == 0 else ("i" if c.startswith("<img") else "")

    body = "".join("<tr>" + "".join(f'<td class="{cls(i, c)}">{c}</td>'
                                   for i, c in enumerate(r)) + "</tr>" for r in rows)
    return f"<table><tr>{h}</tr>{body}</table>"


def _why(r: dict) -> str:
    return html.escape(r.get("reason") or "")


def _roc(ev: Evaluation, os_: dict, vf: dict) -> bytes:
    """ROC plot: 1:N (1 - FNIR vs FPIR) and 1:1 (TAR vs FMR, from the verification stream), as in the DET."""
    curves, marks, eer = {}, [], {}
    if ev.det is not None:
        curves["1:N identification (FPIR, 1 - FNIR)"] = (ev.det["fpir"], ev.det["fnir"],
                                                         os_["non_mated_searches"], "non-mated searches")
        marks += [(r["fpir"], 1 - r["fnir"], f'FPIR {r["target_fpir"]:g}') for r in os_["fnir_at_fpir"]
                  if r["fnir"] is not None]
    v = ev.verification
    if v is not None and v.impostor.n and v.genuine.n:
        name = "1:1 verification (FMR, TAR)"
        curves[name] = (v.impostor.at_least() / v.impostor.n, 1 - v.genuine.at_least() / v.genuine.n,
                        v.impostor.n, "impostor pairs")
        marks += [(r["achieved_far"], r["tar"], f'TAR@FAR {r["far"]:g}') for r in vf["tar_at_far"]
                  if r["tar"] is not None]
        if vf.get("eer") is not None:
            eer[name] = vf["eer"]
    return plots.roc_plot(curves, marks, eer)


def render_html(ev: Evaluation, *, title: str = "megaclass evaluation", images=None, labels=None,
                scaling: dict | None = None, context: dict | None = None,
                pngs: dict | None = None) -> str:
    """The report page as a string (see :func:`write_report`); ``pngs`` receives the plots."""
    pngs = {} if pngs is None else pngs
    m = ev.metrics
    cs, os_, vf = m["closed_set"], m["open_set"], m["verification"]
    parts = [f"<h1>{html.escape(title)}</h1>",
             f'<p class="sub">{time.strftime("%Y-%m-%d %H:%M")} · gallery of '
             f'{m["gallery"]["classes"]:,} classes · {cs["queries"]:,} mated and '
             f'{os_["non_mated_searches"]:,} non-mated searches</p>']
    if context:
        parts.append(_table(["setting", "value"], [[html.escape(str(k)), html.escape(str(v))]
                                                   for k, v in context.items()]))
    # -- summary tables
    rows = [[f"top-{k[3:]} accuracy", _fmt(v, True)] for k, v in cs["top_k"].items()]
    for avg in ("macro", "micro", "weighted"):
        rows.append([f"{avg} precision / recall / F1",
                     " / ".join(_fmt(cs[avg][x], True) for x in ("precision", "recall", "f1"))])
    rows.append(["classes with undefined precision", str(cs["undefined"]["precision"])])
    parts += ["<h2>Closed set (mated searches)</h2>", _table(["metric", "value"], rows)]
    parts.append(_table(["class frequency (enrolled samples)", "classes", "queries", "rank-1 accuracy"],
                        [[html.escape(b["bucket"]), f'{b["classes"]:,}', f'{b["queries"]:,}',
                          _fmt(b["accuracy"], True)] for b in cs["accuracy_by_frequency"]
                         if b["queries"]]))
    rows = [[f'FNIR @ FPIR {r["target_fpir"]:g}', _fmt(r["fnir"], True),
             _fmt(r.get("threshold")), _fmt(r.get("fpir"), True), _why(r)]
            for r in os_["fnir_at_fpir"]]
    rows.insert(0, ["rank-1 miss rate (no threshold)", _fmt(os_["rank1_miss_rate"], True), "", "", ""])
    if "at_gallery_threshold" in os_:
        g = os_["at_gallery_threshold"]
        rows.append(["at the gallery's calibrated threshold", _fmt(g["fnir"], True),
                     _fmt(os_["gallery_threshold"]), _fmt(g["fpir"], True), "FNIR / FPIR"])
    parts += ["<h2>Open-set identification (1:N)</h2>",
              _table(["metric", "FNIR", "threshold", "FPIR achieved", "note"], rows)]
    if os_.get("fpir_reason"):
        parts.append(f'<p class="u">{html.escape(os_["fpir_reason"])}</p>')
    rows = [[f'TAR @ FAR {r["far"]:g}', _fmt(r["tar"], True), _fmt(r.get("threshold")), _why(r)]
            for r in vf["tar_at_far"]]
    rows.append(["EER", _fmt(vf["eer"], True), "", ""])
    parts += ["<h2>Verification (1:1)</h2>",
              f'<p class="sub">{vf["genuine_pairs"]:,} genuine and {vf["impostor_pairs"]:,} impostor '
              f'pairs; {html.escape(vf["note"])}; thresholds to ±{vf["resolution"]:.0e}.</p>',
              _table(["metric", "value", "threshold", "note"], rows)]
    # -- plots
    curves, marks = {}, []
    if ev.det is not None:
        curves["1:N identification (FPIR, FNIR)"] = (ev.det["fpir"], ev.det["fnir"])
        for r in os_["fnir_at_fpir"]:
            if r["fnir"] is not None:
                marks.append((r["fpir"], r["fnir"], f'FPIR {r["target_fpir"]:g}'))
    v = ev.verification
    if v is not None and v.impostor.n and v.genuine.n:
        curves["1:1 verification (FMR, FNMR)"] = (v.impostor.at_least() / v.impostor.n,
                                                  1 - v.genuine.at_least() / v.genuine.n)
    pngs["det"] = plots.det_plot(curves, "false positive rate (FPIR / FMR)",
                                 "false negative rate (FNIR / FNMR)", marks=marks)
    pngs["roc"] = _roc(ev, os_, vf)
    pngs["cmc"] = plots.cmc_plot(ev.cmc)
    thr = os_.get("gallery_threshold")
    label = "gallery threshold"
    first = next((r for r in os_["fnir_at_fpir"] if r["fnir"] is not None), None)
    if thr is None and first is not None:
        thr, label = first["threshold"], f'threshold @ FPIR {first["target_fpir"]:g}'
    pngs["scores"] = plots.score_plot(ev.mated_scores[ev.mated_correct], ev.non_mated_scores,
                                      thr, label)
    pngs["f1"] = plots.f1_histogram(ev.f1)
    if scaling:
        pngs["gallery_size"] = plots.gallery_size_plot(scaling["points"], scaling.get("target_fpir"))
    figs = [_figure(name, png) for name, png in pngs.items()]
    parts += ["<h2>Plots</h2>", '<div class="grid">' + "".join(figs) + "</div>"]
    if scaling:
        parts.append(_table(["enrolled classes", "rank-1 accuracy", f'FNIR @ FPIR {scaling["target_fpir"]:g}',
                             "note"],
                            [[f'{p["gallery_size"]:,}', _fmt(p["top1"], True), _fmt(p.get("fnir"), True),
                              html.escape(p.get("reason") or "")] for p in scaling["points"]]))
    # -- confusions
    parts.append("<h2>Most-confused class pairs</h2>")
    if not ev.confusions:
        parts.append("<p>No rank-1 confusions.</p>")
    else:
        truth_first: dict = {}
        rows = []
        for c in ev.confusions:
            cells = [html.escape(str(c["true"])), html.escape(str(c["predicted"])), str(c["count"])]
            if images is not None:
                if labels is not None and not truth_first:
                    for i, lb in enumerate(labels):
                        truth_first.setdefault(lb, i)
                q = "".join(_img(plots.image_png(images[i]), f"query {i}", "thumb") for i in c["examples"])
                j = truth_first.get(c["predicted"])
                p = _img(plots.image_png(images[j]), "predicted class", "thumb") if j is not None else ""
                cells += [q, p]
            cells.append(", ".join(str(i) for i in c["examples"]))
            rows.append(cells)
        head = ["true class", "predicted as", "count"]
        if images is not None:
            head += ["queries (true class)", "a sample of the predicted class"]
        parts.append(_table(head + ["example query indices"], rows))
    return (f'<!doctype html><html><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
            f"<style>{_CSS}</style></head><body>{''.join(parts)}</body></html>")


def _jsonable(x):
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_jsonable(v) for v in x]
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, float) and not np.isfinite(x):
        return None
    return x


def write_report(out, ev: Evaluation, *, images=None, labels=None, scaling: dict | None = None,
                 title: str = "megaclass evaluation", context: dict | None = None) -> Path:
    """Write ``out/report.html``, ``out/metrics.json`` and ``out/plots/*.png``; returns the HTML path.

    ``images`` (the mated query images, aligned with ``labels``) add thumbnails to the
    confusion table; ``scaling`` is a :func:`~megaclass.evaluate.scaling.gallery_size_curve`
    result.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    pngs: dict[str, bytes] = {}
    page = render_html(ev, title=title, images=images, labels=labels, scaling=scaling,
                       context=context, pngs=pngs)
    (out / "plots").mkdir(exist_ok=True)
    for name, png in pngs.items():  # the same plots as files, for slides and READMEs
        (out / "plots" / f"{name}.png").write_bytes(png)
    metrics = dict(ev.metrics)
    if scaling:
        metrics["gallery_size"] = scaling
    if context:
        metrics["context"] = dict(context)
    (out / "metrics.json").write_text(json.dumps(_jsonable(metrics), indent=2, allow_nan=False))
    path = out / "report.html"
    path.write_text(page, encoding="utf-8")
    return path
