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
import os
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from . import plots
from .originals import Glyph, Source, name_of, thumbnail
from .pipeline import Evaluation
from .report_groups import groups_section

_CSS = """body{font-family:system-ui,sans-serif;margin:24px;max-width:1150px;color:#222}
h1{margin-bottom:0}h2{border-bottom:1px solid #ccc;padding-bottom:4px;margin-top:28px}
table{border-collapse:collapse;margin:8px 0}td,th{border:1px solid #ddd;padding:3px 8px;
text-align:right;vertical-align:top}th{background:#f3f3f3}td.l,th.l,td.i{text-align:left}.u{color:#a33}
.grid{display:flex;flex-wrap:wrap;gap:18px}.grid img{border:1px solid #eee}
.thumb{image-rendering:pixelated;width:48px;height:48px;margin:1px;background:#000}
.s{display:inline-block;vertical-align:top;text-align:center;margin:2px 4px;font-size:.75em;
color:#444;max-width:140px;overflow-wrap:anywhere}.s img{display:block;margin:0 auto 2px;
border:1px solid #ccc;background:#000}.pair{display:flex;gap:6px;align-items:flex-start}
.sub{color:#666}figure{margin:0;width:min-content}
figcaption{font-size:.85em;color:#444;margin-top:4px;line-height:1.35}"""

#: what a class's image means when the gallery has none (it stores templates, not images)
NO_IMAGE = ("no image of this class: the gallery stores templates, not images "
            "(evaluate --gallery-samples names the samples it was enrolled from)")


def _img(png: bytes, alt: str, cls: str = "", size: tuple[int, int] | None = None) -> str:
    data = base64.b64encode(png).decode("ascii")
    c = f' class="{cls}"' if cls else ""
    wh = f' width="{size[0]}" height="{size[1]}"' if size else ""
    return f'<img{c}{wh} alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def _figure(png: bytes, alt: str, caption: str) -> str:
    """A plot with the sentence under it that says what it shows and how to read it."""
    return (f"<figure>{_img(png, alt)}<figcaption>{html.escape(caption)}</figcaption></figure>")


def _fmt(v, pct: bool = False) -> str:
    if v is None:
        return '<span class="u">undefined</span>'
    if isinstance(v, float):
        return f"{v:.2%}" if pct else f"{v:.4g}"
    return html.escape(str(v))


def _table(header: list[str], rows: list[list[str]], cls: str = "") -> str:
    def kind(i: int, c: str) -> str:  # text and images left, numbers right
        if i == 0 or (i < len(header) and header[i] == "note"):
            return "l"
        return "i" if c.startswith(("<img", "<div")) else ""

    first = rows[0] if rows else []
    h = "".join(f'<th class="{"l" if i == 0 or (i < len(first) and kind(i, first[i])) else ""}">'
                f"{html.escape(c)}</th>" for i, c in enumerate(header))

    body = "".join("<tr>" + "".join(f'<td class="{kind(i, c)}">{c}</td>'
                                   for i, c in enumerate(r)) + "</tr>" for r in rows)
    c = f' class="{cls}"' if cls else ""
    return f"<table{c}><tr>{h}</tr>{body}</table>"


def _why(r: dict) -> str:
    return html.escape(r.get("reason") or "")


def _by_key(rows: list[dict], key: str) -> list[dict]:
    """Operating-point rows in ascending order of ``key`` (FPIR or FAR), as a reader scans them."""
    return sorted(rows, key=lambda r: r[key])


class _Samples:
    """Thumbnails of the original samples (files or glyph drawings), each made once."""

    def __init__(self, images, labels, sources, non_mated_sources, class_sample) -> None:
        self.images, self.labels = images, labels
        self.sources, self.nm_sources = sources, non_mated_sources
        self.class_sample = class_sample
        self._png: dict = {}
        self._first: dict | None = None
        self.roots = {"Query": _root(sources), "Non-mated": _root(non_mated_sources)}

    def _cell(self, src: Source, note: str = "", root: str | None = None) -> str:
        if src not in self._png:
            self._png[src] = thumbnail(src)
        png, size = self._png[src]
        full = name_of(src)
        short = os.path.relpath(full, root) if root and not isinstance(src, Glyph) else full
        extra = f"<br>{html.escape(note)}" if note else ""
        return (f'<div class="s" title="{html.escape(full)}">{_img(png, full, "orig", size)}'
                f"{html.escape(short)}{extra}</div>")

    def where(self) -> str:
        """Where the file names shown are relative to."""
        return " ".join(f"{k} files are named relative to {html.escape(v)}."
                        for k, v in self.roots.items() if v)

    def query(self, i: int) -> str:
        """A mated query's original image and name (its model input when no original is known)."""
        if self.sources is not None:
            return self._cell(self.sources[i], root=self.roots["Query"])
        if self.images is not None:
            return (f'<div class="s">{_img(plots.image_png(self.images[i]), f"query {i}", "thumb")}'
                    f"query {i} (model input)</div>")
        return f'<div class="s">query {i}</div>'

    def non_mated(self, i: int) -> str:
        if self.nm_sources is not None:
            return self._cell(self.nm_sources[i], root=self.roots["Non-mated"])
        return f'<div class="s">non-mated search {i}<br>(no image given)</div>'

    def of_class(self, label) -> str:
        """An image of a gallery class: an enrolled sample, a drawing, a query of the class, or a note."""
        found = self.class_sample(label) if self.class_sample is not None else None
        if found is not None:
            return self._cell(found[0], found[1])
        if self.labels is not None and (self.sources is not None or self.images is not None):
            if self._first is None:
                self._first = {}
                for i, lb in enumerate(self.labels):
                    self._first.setdefault(lb, i)
            j = self._first.get(label)
            if j is not None:
                if self.sources is not None:
                    return self._cell(self.sources[j], "a query of this class", self.roots["Query"])
                return (f'<div class="s">{_img(plots.image_png(self.images[j]), "class sample", "thumb")}'
                        f"{html.escape(str(label))}: a query of this class (model input)</div>")
        return f'<div class="s">{html.escape(str(label))}<br><span class="u">{NO_IMAGE}</span></div>'


def _root(sources: Sequence | None) -> str | None:
    """The folder all file sources lie under (their names are shown relative to it), or None."""
    files = [str(x) for x in sources or () if not isinstance(x, Glyph)]
    if not files:
        return None
    try:
        root = os.path.commonpath([os.path.dirname(os.path.abspath(f)) for f in files])
    except ValueError:  # different drives
        return None
    return root if root != os.path.sep else None


def _curves(ev: Evaluation, os_: dict, vf: dict, tag: str = "") -> tuple[dict, dict, list, list, dict]:
    """DET curves, ROC curves, DET marks, ROC marks and EERs of one evaluation."""
    det, roc, dmarks, rmarks, eer = {}, {}, [], [], {}
    if ev.det is not None:
        det[f"1:N identification (FPIR, FNIR){tag}"] = (ev.det["fpir"], ev.det["fnir"])
        roc[f"1:N identification (FPIR, 1 - FNIR){tag}"] = (ev.det["fpir"], ev.det["fnir"],
                                                            os_["non_mated_searches"], "non-mated searches")
        for r in os_["fnir_at_fpir"]:
            if r["fnir"] is not None:
                dmarks.append((r["fpir"], r["fnir"], f'FPIR {r["target_fpir"]:g}'))
                rmarks.append((r["fpir"], 1 - r["fnir"], f'FPIR {r["target_fpir"]:g}'))
    v = ev.verification
    if v is not None and v.impostor.n and v.genuine.n:
        fmr = v.impostor.at_least() / v.impostor.n
        fnmr = 1 - v.genuine.at_least() / v.genuine.n
        det[f"1:1 verification (FMR, FNMR){tag}"] = (fmr, fnmr)
        name = f"1:1 verification (FMR, TAR){tag}"
        roc[name] = (fmr, fnmr, v.impostor.n, "impostor pairs")
        rmarks += [(r["achieved_far"], r["tar"], f'TAR@FAR {r["far"]:g}') for r in vf["tar_at_far"]
                   if r["tar"] is not None]
        if vf.get("eer") is not None:
            eer[name] = vf["eer"]
    return det, roc, dmarks, rmarks, eer


def _threshold(os_: dict) -> tuple[float | None, str]:
    """The threshold the score plot and the non-mated table use: the gallery's calibrated
    one, else the one calibrated for the first target FPIR given that could be measured."""
    if os_.get("gallery_threshold") is not None:
        return os_["gallery_threshold"], "gallery threshold"
    first = next((r for r in os_["fnir_at_fpir"] if r["fnir"] is not None), None)
    if first is None:
        return None, "threshold"
    return first["threshold"], f'threshold @ FPIR {first["target_fpir"]:g}'


def render_html(ev: Evaluation, *, title: str = "megaclass evaluation", images=None, labels=None,
                scaling: dict | None = None, context: dict | None = None,
                pngs: dict | None = None, baseline: Evaluation | None = None,
                baseline_name: str = "baseline", sources: Sequence | None = None,
                non_mated_sources: Sequence | None = None, class_sample=None,
                notes: Sequence[str] = (), worst: int = 10) -> str:
    """The report page as a string (see :func:`write_report`); ``pngs`` receives the plots."""
    pngs = {} if pngs is None else pngs
    m = ev.metrics
    cs, os_, vf = m["closed_set"], m["open_set"], m["verification"]
    b = baseline.metrics if baseline is not None else None
    bname = f"baseline: {baseline_name}"
    cols = ["model"] + ([bname] if b else [])

    sides = [m, b] if b else [m]  # the model's metrics, then the baseline's

    parts = [f"<h1>{html.escape(title)}</h1>",
             f'<p class="sub">{time.strftime("%Y-%m-%d %H:%M")} · gallery of '
             f'{m["gallery"]["classes"]:,} classes · {cs["queries"]:,} mated and '
             f'{os_["non_mated_searches"]:,} non-mated searches</p>']
    if context:
        parts.append(_table(["setting", "value"], [[html.escape(str(k)), html.escape(str(v))]
                                                   for k, v in context.items()]))
    if b:
        parts.append(f'<p class="sub">Beside the model: <b>{html.escape(baseline_name)}</b>, measured '
                     "on the same queries by the same code (its own gallery: one class-mean template "
                     "per class); its curves are dashed.</p>")
    parts += [f'<p class="u">{html.escape(n)}</p>' for n in notes]
    # -- summary tables
    rows = [[f"top-{k[3:]} accuracy", *[_fmt(x["closed_set"]["top_k"].get(k), True) for x in sides]]
            for k in cs["top_k"]]
    for avg in ("macro", "micro", "weighted"):
        rows.append([f"{avg} precision / recall / F1",
                     *[" / ".join(_fmt(x["closed_set"][avg][y], True) for y in ("precision", "recall", "f1"))
                       for x in sides]])
    # the one place that counts classes with an undefined precision (ClassificationReport.undefined)
    rows.append(["classes with undefined precision (never predicted)",
                 *[f'<span class="undef-precision">{x["closed_set"]["undefined"]["precision"]:,}</span>'
                   for x in sides]])
    parts += ["<h2>Closed set (mated searches)</h2>", _table(["metric", *cols], rows)]
    bb = {r["bucket"]: r for r in b["closed_set"]["accuracy_by_frequency"]} if b else {}
    parts.append(_table(["class frequency (enrolled samples)", "classes", "queries",
                         *[f"rank-1 accuracy ({c})" for c in cols]],
                        [[html.escape(r["bucket"]), f'{r["classes"]:,}', f'{r["queries"]:,}',
                          _fmt(r["accuracy"], True)]
                         + ([_fmt(bb[r["bucket"]]["accuracy"], True) if r["bucket"] in bb else ""]
                            if b else [])
                         for r in cs["accuracy_by_frequency"] if r["queries"]]))
    bf = {r["target_fpir"]: r for r in b["open_set"]["fnir_at_fpir"]} if b else {}
    rows = []
    for r in _by_key(os_["fnir_at_fpir"], "target_fpir"):
        row = [f'FNIR @ FPIR {r["target_fpir"]:g}', _fmt(r["fnir"], True),
               _fmt(r.get("threshold")), _fmt(r.get("fpir"), True)]
        if b:
            o = bf.get(r["target_fpir"], {})
            row += [_fmt(o.get("fnir"), True), _fmt(o.get("fpir"), True)]
        rows.append(row + [_why(r)])
    rows.insert(0, ["rank-1 miss rate (no threshold)", _fmt(os_["rank1_miss_rate"], True), "", "",
                    *([_fmt(b["open_set"]["rank1_miss_rate"], True), ""] if b else []), ""])
    if "at_gallery_threshold" in os_ or (b and "at_gallery_threshold" in b["open_set"]):
        g = os_.get("at_gallery_threshold", {})
        row = ["at the gallery's calibrated threshold", _fmt(g.get("fnir"), True),
               _fmt(os_["gallery_threshold"]), _fmt(g.get("fpir"), True)]
        if b and "at_gallery_threshold" in b["open_set"]:
            h = b["open_set"]["at_gallery_threshold"]
            row += [_fmt(h.get("fnir"), True), _fmt(h.get("fpir"), True)]
        elif b:
            row += ['<span class="u">not calibrated</span>'] * 2
        rows.append(row + ["FNIR / FPIR"])
    head = ["metric", "FNIR (model)", "threshold (model)", "FPIR achieved (model)"]
    if b:
        head += [f"FNIR ({bname})", f"FPIR achieved ({bname})"]
    parts += ["<h2>Open-set identification (1:N)</h2>",
              _table(head + ["note"], rows, "fpir")]
    if os_.get("fpir_reason"):
        parts.append(f'<p class="u">{html.escape(os_["fpir_reason"])}</p>')
    bt = {r["far"]: r for r in b["verification"]["tar_at_far"]} if b else {}
    rows = []
    for r in _by_key(vf["tar_at_far"], "far"):
        row = [f'TAR @ FAR {r["far"]:g}', _fmt(r["tar"], True), _fmt(r.get("threshold"))]
        if b:
            row.append(_fmt(bt.get(r["far"], {}).get("tar"), True))
        rows.append(row + [_why(r)])
    rows.append(["EER", _fmt(vf["eer"], True), "",
                 *([_fmt(b["verification"]["eer"], True)] if b else []), ""])
    parts += ["<h2>Verification (1:1)</h2>",
              f'<p class="sub">{vf["genuine_pairs"]:,} genuine and {vf["impostor_pairs"]:,} impostor '
              f'pairs; {html.escape(vf["note"])}; thresholds to ±{vf["resolution"]:.0e}.</p>',
              _table(["metric", "TAR (model)", "threshold (model)",
                      *([f"TAR ({bname})"] if b else []), "note"], rows, "far")]
    # -- plots, each with a caption that says what it shows and how to read it
    det, roc, dmarks, rmarks, eer = _curves(ev, os_, vf)
    dashed: list[str] = []
    if b and baseline is not None:
        bdet, broc, _, _, beer = _curves(baseline, b["open_set"], b["verification"], f" — {baseline_name}")
        det.update(bdet)
        roc.update(broc)
        eer.update(beer)
        dashed = [*bdet, *broc]
    tail = f" Dashed: {baseline_name} (the baseline)." if b else ""
    caps: dict[str, str] = {}
    pngs["det"] = plots.det_plot(det, "false positive rate (FPIR / FMR)",
                                 "false negative rate (FNIR / FNMR)", marks=dmarks, dashed=dashed)
    caps["det"] = ("DET: the false negative rate (FNIR for 1:N searches, FNMR for 1:1 pairs) against "
                   "the false positive rate (FPIR / FMR) as the threshold moves, on normal-deviate "
                   "axes. Lower left is better; dots are the FNIR @ FPIR rows of the table." + tail)
    pngs["roc"] = plots.roc_plot(roc, rmarks, eer, dashed=dashed)
    caps["roc"] = ("ROC: true against false accept rate (log axis, down to 1 / the "
                   "non-matching comparisons, dotted), with the TAR@FAR and FNIR@FPIR points and the "
                   "EER. Up and left is better." + tail)
    kmax = len(ev.cmc)
    pngs["cmc"] = plots.cmc_plot(ev.cmc, baseline.cmc if b and baseline is not None else None,
                                 ("model", baseline_name))
    caps["cmc"] = (f"CMC: the share of mated searches whose true class is among the k best-scoring "
                   f"classes, for k = 1..{kmax} (k = 1 is rank-1 accuracy). Higher is better; a "
                   "curve that keeps rising after k = 1 means the right class is often a close second."
                   + (f" Dashed: {baseline_name}." if b else ""))
    thr, label = _threshold(os_)
    bscores = None
    if b and baseline is not None:
        bthr, blabel = _threshold(b["open_set"])
        bscores = (baseline.mated_scores[baseline.mated_correct], baseline.non_mated_scores, bthr, blabel)
    pngs["scores"] = plots.score_plot(ev.mated_scores[ev.mated_correct], ev.non_mated_scores,
                                      thr, label, bscores, ("model", baseline_name))
    where = (f"The dashed line is the {label} ({thr:.3f}): non-mated searches right of it are "
             "false positives, mated ones left of it false negatives."
             if thr is not None else "No threshold could be set (no non-mated searches).")
    caps["scores"] = ("Score distributions: the best (rank-1) cosine score of each correctly ranked "
                      "mated search and of each non-mated search. " + where + " The less the two "
                      "overlap, the better an operating point separates them."
                      + (f" Lower panel: {baseline_name}, on its own score scale." if b else ""))
    pngs["f1"] = plots.f1_histogram(ev.f1, baseline.f1 if b and baseline is not None else None,
                                    ("model", baseline_name))
    caps["f1"] = (f"Per-class F1 of rank-1 predictions over the {cs['n_classes']:,} classes queried "
                  "or predicted: mass near 1 is good. The bar at 0 holds classes never recognised, "
                  "among them those never predicted at all (counted in the closed-set table)."
                  + (f" Outline: {baseline_name}." if b else ""))
    if scaling:
        pngs["gallery_size"] = plots.gallery_size_plot(scaling["points"], scaling.get("target_fpir"))
        caps["gallery_size"] = ("Gallery-size scaling: rank-1 accuracy and FNIR @ FPIR as distractor "
                                "classes are added to a scratch copy of the gallery (log axis). A "
                                "robust model loses little as the gallery grows.")
    figs = [_figure(png, f"{name} plot", caps[name]) for name, png in pngs.items()]
    parts += ["<h2>Plots</h2>", '<div class="grid">' + "".join(figs) + "</div>"]
    samples = _Samples(images, labels, sources, non_mated_sources, class_sample)
    if scaling:
        parts += _scaling(scaling, samples)
    parts += groups_section(m.get("groups"), pngs)  # after the grid: its plot is shown inline
    parts += _confusions(ev, samples) + _worst_non_mated(ev, samples, thr, label, worst)
    return (f'<!doctype html><html><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
            f"<style>{_CSS}</style></head><body>{''.join(parts)}</body></html>")


def _scaling(scaling: dict, samples: _Samples) -> list[str]:
    """The gallery-size table and, at the largest size, the wrong rank-1 answers as image pairs."""
    rules = next((list(p["fnir_by_decision"]) for p in scaling["points"] if p.get("fnir_by_decision")), [])
    fnir_cols = ([f'FNIR @ FPIR {scaling["target_fpir"]:g}, {r}' for r in rules]
                 or [f'FNIR @ FPIR {scaling["target_fpir"]:g}'])

    def fnirs(p: dict) -> list[str]:
        by = p.get("fnir_by_decision") or {}
        return [_fmt(by.get(r), True) for r in rules] if rules else [_fmt(p.get("fnir"), True)]

    parts = [_table(["enrolled classes", "rank-1 accuracy", *fnir_cols,
                     "wrong rank-1 (to distractors)", "note"],
                    [[f'{p["gallery_size"]:,}', _fmt(p["top1"], True), *fnirs(p),
                      f'{p["wrong"]:,} ({p["wrong_to_distractors"]:,})' if "wrong" in p else "",
                      html.escape(p.get("reason") or "")] for p in scaling["points"]])]
    conf = scaling.get("confusions") or []
    if conf:
        size = max(p["gallery_size"] for p in scaling["points"] if p.get("top1") is not None)
        parts.append(f"<h2>Confusions at {size:,} enrolled classes</h2>")
        parts.append('<p class="sub">Mated queries whose first answer was another class, highest score '
                     "first: the query, and an image of the class it was taken for (a distractor's "
                     "drawing is rendered from its id). Judge by eye whether the two could be the same "
                     f"class: pairs a person cannot tell apart are the data's ceiling, not the model's. "
                     f"{samples.where()}</p>")
        rows = [[samples.query(c["query"]), html.escape(c["true"]),
                 samples.of_class(c["predicted"]) if c["predicted"] is not None else "none",
                 "distractor" if c["distractor"] else "enrolled", f'{c["score"]:.3f}'] for c in conf]
        parts.append(_table(["query", "true class", "taken for", "kind", "score"], rows,
                            "scaling-confusions"))
    return parts


def _confusions(ev: Evaluation, samples: _Samples) -> list[str]:
    parts = ["<h2>Most-confused class pairs</h2>"]
    if not ev.confusions:
        return parts + ["<p>No rank-1 confusions.</p>"]
    parts.append('<p class="sub">Each row: mated queries of the true class (named by file or glyph '
                  f"id) that ranked another class first, and an image of that class. {samples.where()}</p>")
    rows = []
    for c in ev.confusions:
        rows.append([html.escape(str(c["true"])), html.escape(str(c["predicted"])), str(c["count"]),
                     '<div class="pair">' + "".join(samples.query(i) for i in c["examples"]) + "</div>",
                     samples.of_class(c["predicted"])])
    return parts + [_table(["true class", "predicted as", "count", "queries (true class)",
                            "the predicted class"], rows, "confusions")]


def _worst_non_mated(ev: Evaluation, samples: _Samples, thr: float | None, label: str,
                     n: int) -> list[str]:
    s = ev.non_mated_scores
    if s is None or not len(s):
        return []
    order = np.argsort(-s, kind="stable")
    accepted = int((s >= thr).sum()) if thr is not None else 0
    if thr is None:
        head = f"the {min(n, len(s))} highest-scoring non-mated searches (no threshold set)"
    elif accepted:
        head = (f"{accepted:,} of {len(s):,} non-mated searches were wrongly accepted at the {label} "
                f"({thr:.3f}); the {min(n, accepted)} highest-scoring")
        order = order[:accepted]
    else:
        head = (f"no non-mated search was accepted at the {label} ({thr:.3f}); the "
                f"{min(n, len(s))} closest to it")
    rows = []
    for i in order[:n].tolist():
        cls = ev.non_mated_predictions[i] if ev.non_mated_predictions else None
        rows.append([str(i), _fmt(float(s[i])), html.escape(str(cls)) if cls is not None else "",
                     samples.non_mated(i), samples.of_class(cls) if cls is not None else ""])
    return ["<h2>Worst non-mated searches</h2>",
            f'<p class="sub">Searches of classes not in the gallery: {html.escape(head)}, with the '
            f"class each one matched best. {samples.where()}</p>",
            _table(["search", "score", "matched class", "non-mated query", "the matched class"],
                   rows, "worst")]


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
                 title: str = "megaclass evaluation", context: dict | None = None,
                 baseline: Evaluation | None = None, baseline_name: str = "baseline",
                 sources: Sequence[Source] | None = None,
                 non_mated_sources: Sequence[Source] | None = None, class_sample=None,
                 notes: Sequence[str] = ()) -> Path:
    """Write ``out/report.html``, ``out/metrics.json`` and ``out/plots/*.png``; returns the HTML path.

    Parameters
    ----------
    ev : the model's :class:`Evaluation`.
    images, labels : the mated queries as the model saw them, and their true classes
        (thumbnails of last resort, when no ``sources`` are given).
    scaling : a :func:`~megaclass.evaluate.scaling.gallery_size_curve` result.
    baseline, baseline_name : an :class:`Evaluation` of a baseline on the same queries
        (e.g. :func:`~megaclass.evaluate.baseline.pixel_baseline`): its values become a
        column of every table and its curves are drawn dashed beside the model's.
    sources, non_mated_sources : the original of each mated / non-mated query, a file path
        or a :class:`~megaclass.evaluate.originals.Glyph`: thumbnails show these
        (downscaled to 96 px), named by file or glyph id.
    class_sample : ``label -> (source, what) | None``, an image of a gallery class
        (:func:`~megaclass.evaluate.originals.class_sample_finder`).
    notes : sentences shown under the title (e.g. what the baseline could not enroll).
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    pngs: dict[str, bytes] = {}
    page = render_html(ev, title=title, images=images, labels=labels, scaling=scaling,
                       context=context, pngs=pngs, baseline=baseline, baseline_name=baseline_name,
                       sources=sources, non_mated_sources=non_mated_sources,
                       class_sample=class_sample, notes=notes)
    (out / "plots").mkdir(exist_ok=True)
    for name, png in pngs.items():  # the same plots as files, for slides and READMEs
        (out / "plots" / f"{name}.png").write_bytes(png)
    metrics = dict(ev.metrics)
    if scaling:
        metrics["gallery_size"] = scaling
    if context:
        metrics["context"] = dict(context)
    if baseline is not None:
        metrics["baseline"] = {"name": baseline_name, **baseline.metrics}
    (out / "metrics.json").write_text(json.dumps(_jsonable(metrics), indent=2, allow_nan=False))
    path = out / "report.html"
    path.write_text(page, encoding="utf-8")
    return path
