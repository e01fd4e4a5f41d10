"""The per-group section of the report and CLI: tables and a plot of
:func:`~megaclass.evaluate.groups.group_rates` results (rates per group, 95 % intervals, log scale)."""

from __future__ import annotations

import base64
import html

import numpy as np


def _pct(v, ci=None) -> str:
    if v is None:
        return "—"
    s = f"{v:.2%}"
    return s + (f" [{ci[0]:.2%}–{ci[1]:.2%}]" if ci else "")


def _ratio(d: dict) -> str:
    if d.get("max_min_ratio") is None:
        return f"undefined ({d.get('reason')})"
    return (f"{d['max_min_ratio']:.2f}× ({d['max_group']} {d['max_rate']:.2%} / "
            f"{d['min_group']} {d['min_rate']:.2%})")


def _cell(row: dict, name: str) -> str:
    n = row["mated_searches" if name == "fnir" else "non_mated_searches"]
    if row[f"{name}_too_small"]:
        return f"too small ({row[f'{name}_errors']}/{n:,})"
    vs = row[f"{name}_vs_overall"]
    return (f"{_pct(row[name], row[f'{name}_ci95'])} · {row[f'{name}_errors']}/{n:,}"
            + (f" · {vs:.2f}× overall" if vs is not None else ""))


def groups_table(groups: dict):
    """A rich Table of every operating point: per-group FNIR and FPIR and the differentials."""
    from rich.table import Table

    t = Table(title=f"error rates per group of '{groups['key']}' (95% CI · errors/searches)")
    for col in ("operating point", "group", "FNIR", "FPIR"):
        t.add_column(col)
    for at in groups["thresholds"]:
        name = f"{at['point']} (T={at['threshold']:.3f})"
        o = at["overall"]
        t.add_row(name, "overall", _pct(o["fnir"], o["fnir_ci95"]), _pct(o["fpir"], o["fpir_ci95"]))
        for r in at["groups"]:
            t.add_row("", r["group"], _cell(r, "fnir"), _cell(r, "fpir"))
        d = at["differentials"]
        t.add_row("", "max/min", _ratio(d["fnir"]), _ratio(d["fpir"]), end_section=True)
    for s in groups["skipped"]:
        t.add_row(s["point"], "", f"skipped: {s['reason']}", "")
    return t


def group_plot(at: dict, key: str) -> bytes:
    """FNIR and FPIR per group at one operating point: points with 95 % intervals on a log
    axis, the overall rate as a dashed line; too-small groups are named, not drawn."""
    from .plots import _plt, _png

    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(8.4, 3.4))
    names = [r["group"] for r in at["groups"]]
    x = np.arange(len(names))
    for ax, rate, what in zip(axes, ("fnir", "fpir"), ("FNIR", "FPIR"), strict=True):
        floor = 1e-4
        for i, r in enumerate(at["groups"]):
            v, ci = r[rate], r[f"{rate}_ci95"]
            if v is None:
                ax.annotate("too small" if r[f"{rate}_too_small"] else "n/a", (i, floor * 1.5),
                            ha="center", fontsize=7, color="#a33", rotation=90)
                continue
            lo, hi = max(ci[0], floor), max(ci[1], floor)
            ax.errorbar([i], [max(v, floor)], yerr=[[max(v, floor) - lo], [hi - max(v, floor)]],
                        fmt="o", color="C0" if rate == "fnir" else "C3", capsize=3)
        overall = at["overall"][rate]
        if overall:
            ax.axhline(overall, ls="--", color="#777", lw=1, label=f"overall {overall:.2%}")
            ax.legend(fontsize=7, loc="upper right")
        ax.set_yscale("log")
        ax.set_ylim(floor, 1.0)
        ax.set_xticks(x, names, rotation=30 if len(names) > 4 else 0, fontsize=8)
        ax.set_xlim(-0.6, len(names) - 0.4)
        ax.set_xlabel(key)
        ax.set_title(f"{what} per group", fontsize=9)
        ax.grid(True, which="both", axis="y", alpha=0.3)
    fig.suptitle(f"{at['point']}, T = {at['threshold']:.3f} (95% Wilson intervals)", fontsize=9)
    return _png(fig)


def _h(v) -> str:
    return html.escape(str(v))


def groups_section(groups: dict | None, pngs: dict) -> list[str]:
    """HTML of the per-group section (empty without groups); its plot is added to ``pngs``."""
    if not groups:
        return []
    parts = [f"<h2>Error rates per group of <code>{_h(groups['key'])}</code></h2>",
             '<p class="sub">Each group is measured at the same threshold as everyone: the '
             "gallery's operational one and one calibrated on all non-mated searches per target "
             "FPIR (as in NIST FRTE demographic reports and ISO/IEC 19795-10). Mated searches "
             "belong to their true class's group, non-mated ones to their own class's. Cells: "
             "rate [95% interval] · errors/searches · ratio to the overall rate. A group with "
             f"fewer than {groups['min_expected_errors']:g}/rate searches is <i>too small</i>: its "
             "rate is not reported (even 0 errors would not contradict the overall rate) and it "
             "is left out of the max/min differential.</p>"]
    if groups["thresholds"]:
        at = groups["thresholds"][0]
        png = group_plot(at, groups["key"])
        pngs["groups"] = png
        data = base64.b64encode(png).decode("ascii")
        parts.append(f'<figure><img alt="error rates per group" src="data:image/png;base64,{data}">'
                     "<figcaption>Rates per group (log scale) with 95% intervals at the first "
                     "operating point; dashed: the overall rate. Points far from the line, with "
                     "intervals that do not reach it, are real differentials.</figcaption></figure>")
    head = "<tr><th class=l>operating point</th><th class=l>group</th><th>FNIR</th><th>FPIR</th></tr>"
    rows = []
    for at in groups["thresholds"]:
        o = at["overall"]
        rows.append(f"<tr><td class=l>{_h(at['point'])} (T={at['threshold']:.3f})</td><td class=l><b>"
                    f"overall</b></td><td>{_pct(o['fnir'], o['fnir_ci95'])}</td>"
                    f"<td>{_pct(o['fpir'], o['fpir_ci95'])}</td></tr>")
        for r in at["groups"]:
            rows.append(f"<tr><td></td><td class=l>{_h(r['group'])}</td><td>{_h(_cell(r, 'fnir'))}</td>"
                        f"<td>{_h(_cell(r, 'fpir'))}</td></tr>")
        d = at["differentials"]
        rows.append(f"<tr><td></td><td class=l><b>max/min</b></td><td>{_h(_ratio(d['fnir']))}</td>"
                    f"<td>{_h(_ratio(d['fpir']))}</td></tr>")
    for s in groups["skipped"]:
        rows.append(f"<tr><td class=l>{_h(s['point'])}</td><td></td><td class=l colspan=2>skipped: "
                    f"{_h(s['reason'])}</td></tr>")
    return parts + [f"<table>{head}{''.join(rows)}</table>"]
