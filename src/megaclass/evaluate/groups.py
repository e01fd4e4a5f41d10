"""Error rates per population group and their differentials (ISO/IEC 19795-10, NIST FRTE).

A mated search belongs to the group of its true (enrolled) class; a non-mated search to
the group of the probe's own, never-enrolled class. At one threshold T fixed for everyone
(the gallery's operational threshold, or the one calibrated on *all* non-mated searches
for a target FPIR — NIST FRTE's demographic reports do the same), each group gets

- FNIR_g(T): share of its mated searches not returned at rank 1 with score >= T;
- FPIR_g(T): share of its non-mated searches whose best candidate scores >= T;

each with a 95 % Wilson interval and the number of searches behind it, and the
differentials: the max/min ratio across groups and each group's rate over the overall rate.

A group is **too small** for a rate p when it has fewer than ``3 / p`` searches: with
fewer, even 0 errors is consistent with the overall rate (the "rule of three", Hanley &
Lippman-Hand 1983, as used in ISO/IEC 19795-1). p is the target FPIR for FPIR at a target,
else the overall observed rate. Too-small groups get ``None`` with the reason, never 0 %,
and are left out of the differentials. Searches whose class lacks the key form the group
``"unknown"`` (counted, reported like any other).

Example
-------
>>> r = group_rates(["a"] * 4 + ["b"] * 4, [0.9, 0.2, 0.1, 0.9] + [0.9] * 4, [True] * 8,
...                 key="k", threshold=0.5, fpirs=(), min_expected_errors=1)
>>> [g["fnir"] for g in r["thresholds"][0]["groups"]]
[0.5, 0.0]
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ..errors import InvalidInputError
from .open_set import calibrate_threshold, wilson_interval

UNKNOWN = "unknown"
#: a group needs ``MIN_EXPECTED_ERRORS / p`` searches for its rate at overall rate p
MIN_EXPECTED_ERRORS = 3


def group_of(meta: Mapping | None, key: str) -> str:
    """The group value of ``key`` in a class's meta (``"unknown"`` when absent or empty)."""
    v = (meta or {}).get(key)
    return UNKNOWN if v is None or str(v).strip() == "" else str(v)


def _needed(rate: float | None, floor: float | None, k: float) -> float:
    p = floor if floor is not None else rate
    return math.inf if not p else k / p


def _rate(errors: int, n: int, need: float, what: str) -> dict:
    lo, hi = wilson_interval(errors, n)
    small = n < need
    reason = None
    if small:
        reason = (f"too small: {n:,} {what} searches, a rate here needs >= "
                  + ("some errors overall" if math.isinf(need) else f"{math.ceil(need - 1e-9):,}"))
    return {"rate": None if small else errors / n if n else None, "errors": errors, "n": n,
            "ci95": [lo, hi] if n else None, "too_small": reason}


def _differential(rows: list[dict], name: str, overall: float | None) -> dict:
    """max/min ratio over groups with a rate (None with a reason when it cannot be formed)."""
    have = [(r["group"], r[name]) for r in rows if r[name] is not None]
    if len(have) < 2:
        return {"max_min_ratio": None, "max_group": None, "min_group": None,
                "reason": f"{len(have)} group(s) large enough to compare"}
    hi = max(have, key=lambda x: x[1])
    lo = min(have, key=lambda x: x[1])
    out = {"max_group": hi[0], "min_group": lo[0], "max_rate": hi[1], "min_rate": lo[1],
           "max_minus_min": hi[1] - lo[1], "overall": overall}
    if lo[1] == 0:
        return {**out, "max_min_ratio": None, "reason": f"group {lo[0]!r} has no errors"}
    return {**out, "max_min_ratio": hi[1] / lo[1], "reason": None}


def _at(threshold: float, mg, ms, mc, ng, ns, groups, fpir_floor: float | None, k: float) -> dict:
    miss = ~(mc & (ms >= threshold))
    fp = ns >= threshold
    o_fnir = float(miss.mean())
    o_fpir = float(fp.mean()) if ns.size else None
    overall = {"fnir": o_fnir, "fnir_ci95": list(wilson_interval(int(miss.sum()), miss.size)),
               "mated_searches": int(miss.size),
               "fpir": o_fpir, "non_mated_searches": int(ns.size),
               "fpir_ci95": list(wilson_interval(int(fp.sum()), fp.size)) if ns.size else None}
    rows = []
    for g in groups:
        mi, ni = mg == g, ng == g
        fn = _rate(int(miss[mi].sum()), int(mi.sum()), _needed(o_fnir, None, k), "mated")
        row = {"group": g, "fnir": fn["rate"], "fnir_ci95": fn["ci95"], "fnir_errors": fn["errors"],
               "mated_searches": fn["n"], "fnir_too_small": fn["too_small"]}
        if ns.size:
            f = _rate(int(fp[ni].sum()), int(ni.sum()), _needed(o_fpir, fpir_floor, k), "non-mated")
            row.update(fpir=f["rate"], fpir_ci95=f["ci95"], fpir_errors=f["errors"],
                       non_mated_searches=f["n"], fpir_too_small=f["too_small"])
        else:
            row.update(fpir=None, fpir_ci95=None, fpir_errors=0, non_mated_searches=0,
                       fpir_too_small="FPIR undefined: no non-mated searches")
        row["fnir_vs_overall"] = row["fnir"] / o_fnir if row["fnir"] is not None and o_fnir else None
        row["fpir_vs_overall"] = (row["fpir"] / o_fpir
                                  if row["fpir"] is not None and o_fpir else None)
        rows.append(row)
    return {"threshold": float(threshold), "overall": overall, "groups": rows,
            "differentials": {"fnir": _differential(rows, "fnir", o_fnir),
                              "fpir": _differential(rows, "fpir", o_fpir)}}


def group_rates(mated_groups: Sequence[str], mated_scores, mated_correct,
                non_mated_groups: Sequence[str] = (), non_mated_scores=(), *, key: str,
                threshold: float | None = None, fpirs: Sequence[float] = (0.01,),
                min_expected_errors: float = MIN_EXPECTED_ERRORS) -> dict:
    """FNIR / FPIR per group at the operational ``threshold`` and at one threshold per FPIR.

    Parameters
    ----------
    mated_groups, mated_scores, mated_correct : per mated search, the group of its true
        class, its rank-1 score (``-inf`` for no candidate) and whether rank 1 was right.
    non_mated_groups, non_mated_scores : per non-mated search, its group and best score.
    key : the class meta key the groups come from (reported back).
    threshold : the gallery's operational threshold (None: not calibrated, skipped).
    fpirs : target FPIRs; each threshold is calibrated on all non-mated scores together.
    min_expected_errors : a group's rate is reported when it has at least
        ``min_expected_errors / p`` searches (3: the rule of three).

    Returns
    -------
    dict (JSON-ready): ``key``, ``groups`` (name and search counts), ``thresholds`` (one entry
    per operating point: ``overall``, per-group ``groups`` rows and ``differentials``), and
    ``skipped`` operating points with the reason.
    """
    ms = np.asarray(mated_scores, dtype=np.float64).reshape(-1)
    mc = np.asarray(mated_correct, dtype=bool).reshape(-1)
    mg = np.asarray([str(g) for g in mated_groups], dtype=object)
    ns = np.asarray(non_mated_scores, dtype=np.float64).reshape(-1)
    ng = np.asarray([str(g) for g in non_mated_groups], dtype=object)
    if not ms.size:
        raise InvalidInputError("group rates need at least one mated search")
    if not (mg.size == ms.size == mc.size):
        raise InvalidInputError(f"{mg.size} mated groups for {ms.size} scores and {mc.size} flags")
    if ng.size != ns.size:
        raise InvalidInputError(f"{ng.size} non-mated groups for {ns.size} non-mated scores")
    if not min_expected_errors > 0:
        raise InvalidInputError(f"min_expected_errors must be > 0, got {min_expected_errors}")
    names = sorted(set(mg.tolist()) | set(ng.tolist()), key=lambda g: (g == UNKNOWN, g))
    out: dict[str, Any] = {"key": key, "min_expected_errors": min_expected_errors,
           "groups": [{"group": g, "mated_searches": int((mg == g).sum()),
                       "non_mated_searches": int((ng == g).sum())} for g in names],
           "thresholds": [], "skipped": []}
    if threshold is not None:
        out["thresholds"].append({"point": "gallery threshold", "target_fpir": None,
                                  **_at(threshold, mg, ms, mc, ng, ns, names, None, min_expected_errors)})
    else:
        out["skipped"].append({"point": "gallery threshold",
                               "reason": "the gallery has no operational threshold (calibrate it)"})
    for t in fpirs:
        need = math.ceil(1.0 / t - 1e-9)
        if ns.size < need:
            out["skipped"].append({"point": f"FPIR {t:g}", "reason": (
                "no non-mated searches" if not ns.size else
                f"needs >= {need:,} non-mated searches, got {ns.size:,}")})
            continue
        cal = calibrate_threshold(ns, t)
        out["thresholds"].append({"point": f"FPIR {t:g}", "target_fpir": float(t),
                                  **_at(cal.threshold, mg, ms, mc, ng, ns, names, float(t),
                                        min_expected_errors)})
    return out


def read_probe_meta(path) -> dict[str, dict[str, str]]:
    """``--non-mated-meta`` CSV: a header whose first column is ``file`` or ``id``, then one
    column per attribute; returns ``{file-or-id: {attribute: value}}``."""
    import csv
    from pathlib import Path

    p = Path(path)
    if not p.is_file():
        raise InvalidInputError(f"non-mated meta file {p} does not exist")
    try:
        with p.open(newline="", encoding="utf-8-sig") as f:
            rows = list(csv.reader(f))
    except (UnicodeDecodeError, csv.Error) as e:
        raise InvalidInputError(f"{p} is not a UTF-8 CSV file: {e}") from None
    if not rows or len(rows[0]) < 2 or rows[0][0].strip().lower() not in ("file", "id"):
        raise InvalidInputError(f"{p}: the first row must be a header 'file' (or 'id'), then one "
                                "column per attribute, e.g. 'file,strokes'")
    head = [h.strip() for h in rows[0]]
    out: dict[str, dict[str, str]] = {}
    for n, row in enumerate(rows[1:], start=2):
        if not any(c.strip() for c in row):
            continue
        if len(row) != len(head):
            raise InvalidInputError(f"{p} line {n}: {len(row)} columns, the header has {len(head)}")
        out[row[0].strip()] = {h: c.strip() for h, c in zip(head[1:], row[1:], strict=True)}
    return out


def probe_meta(files: Sequence[str | None] | None, labels: Sequence[str],
               table: Mapping[str, Mapping] | None = None) -> list[dict]:
    """Attributes of each non-mated probe: glyph attributes of a ``glyph-<id>`` label, then
    the ``table`` row of its file (as given, or its name) or of its label (the id), which wins."""
    from pathlib import Path

    from ..data.glyph_attributes import glyph_class_meta

    table = table or {}
    out = []
    for i, label in enumerate(labels):
        f = files[i] if files is not None else None
        row = (table.get(f) or table.get(Path(f).name) if f else None) or table.get(str(label)) or {}
        out.append({**glyph_class_meta(label), **row})
    return out
