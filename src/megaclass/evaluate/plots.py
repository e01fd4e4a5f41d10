"""PNG plots of evaluation results (matplotlib, Agg backend), returned as bytes.

DET curves use normal-deviate (probit) axes as in ISO/IEC 19795-1 and NIST FRVT/FRTE
reports: a straight line there means Gaussian-like score distributions, and the low
error rates that matter are spread out instead of squashed against an axis.

ROC curves put the true accept rate (TAR = 1 - FNMR, or 1 - FNIR for 1:N) against the
false accept rate on a log axis, as in the IJB-B/IJB-C protocols (Whitelam et al. 2017,
Maze et al. 2018) and InsightFace's verification reports; the axis stops where the
number of non-matching comparisons stops resolving rates (1 / their count).
"""

from __future__ import annotations

import io
import math
from collections.abc import Collection, Sequence
from statistics import NormalDist

import numpy as np

from ..errors import InvalidInputError

_TICKS = [1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 0.05, 0.2, 0.5, 0.8, 0.95, 0.99]


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=100)
    _plt().close(fig)
    return buf.getvalue()


def probit(p) -> np.ndarray:
    """Normal deviate of a rate, clipped to [1e-7, 1 - 1e-7] (rates of 0 or 1 are finite)."""
    inv = NormalDist().inv_cdf
    p = np.clip(np.asarray(p, dtype=np.float64), 1e-7, 1 - 1e-7)
    return np.array([inv(x) for x in p.reshape(-1)]).reshape(p.shape)


def _thin(x: np.ndarray, y: np.ndarray, n: int = 2000) -> tuple[np.ndarray, np.ndarray]:
    if x.size <= n:
        return x, y
    keep = np.unique(np.linspace(0, x.size - 1, n).astype(int))
    return x[keep], y[keep]


def det_plot(curves: dict[str, tuple], xlabel: str = "FPIR", ylabel: str = "FNIR",
             title: str = "DET (normal-deviate axes)", marks: Sequence[tuple] = (),
             dashed: Collection[str] = ()) -> bytes:
    """DET curves ``{name: (false_positive_rates, false_negative_rates)}`` on probit axes.

    ``marks`` are ``(x, y, text)`` points to annotate (e.g. the operating threshold);
    curves named in ``dashed`` (a baseline) are drawn dashed.
    """
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.5, 4.5))
    for name, (fp, fn) in curves.items():
        fp, fn = _thin(np.asarray(fp), np.asarray(fn))
        ax.plot(probit(fp), probit(fn), "--" if name in dashed else "-", label=name)
    for x, y, text in marks:
        ax.plot(probit(x), probit(y), "ko")
        ax.annotate(text, (float(probit(x)), float(probit(y))), textcoords="offset points",
                    xytext=(6, 6), fontsize=8)
    ticks = probit(_TICKS)
    ax.set_xticks(ticks, [f"{t:g}" for t in _TICKS], rotation=45, fontsize=8)
    ax.set_yticks(ticks, [f"{t:g}" for t in _TICKS], fontsize=8)
    ax.set_xlim(probit(1e-6), probit(0.99))
    ax.set_ylim(probit(1e-4), probit(0.995))
    ax.grid(alpha=0.3)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    if curves:
        ax.legend(fontsize=8)
    return _png(fig)


def roc_points(false_positive, false_negative) -> tuple[np.ndarray, np.ndarray]:
    """ROC points ``(FAR, TAR)`` from error rates taken at the same thresholds.

    ``false_positive`` (FMR or FPIR) and ``false_negative`` (FNMR or FNIR) are aligned
    arrays, one entry per threshold, in any order. Returns the distinct points sorted by
    FAR ascending with TAR = 1 - false negative rate; for rates from one score threshold
    TAR is then non-decreasing too.

    Examples
    --------
    >>> far, tar = roc_points([0.5, 0.0, 0.5, 1.0], [0.0, 1.0, 0.0, 0.0])
    >>> far.tolist(), tar.tolist()
    ([0.0, 0.5, 1.0], [0.0, 1.0, 1.0])
    """
    x = np.asarray(false_positive, dtype=np.float64).reshape(-1)
    y = 1.0 - np.asarray(false_negative, dtype=np.float64).reshape(-1)
    if x.shape != y.shape:
        raise InvalidInputError(f"{x.size} false positive rates but {y.size} false negative rates")
    if not (np.isfinite(x).all() and np.isfinite(y).all()):
        raise InvalidInputError("ROC rates must be finite (got NaN or inf)")
    if x.size and (x.min() < 0 or x.max() > 1 or y.min() < 0 or y.max() > 1):
        raise InvalidInputError("ROC rates must lie in [0, 1]")
    order = np.lexsort((y, x))
    x, y = x[order], y[order]
    keep = np.ones(x.size, dtype=bool)
    keep[1:] = (np.diff(x) != 0) | (np.diff(y) != 0)
    return x[keep], y[keep]


def _thin_log(x: np.ndarray, y: np.ndarray, n: int = 2000) -> tuple[np.ndarray, np.ndarray]:
    # x ascending: keep every low-FAR point (few, and the ones that matter) plus an even sample
    if x.size <= n:
        return x, y
    keep = np.unique(np.concatenate([np.arange(n // 2), np.linspace(0, x.size - 1, n).astype(int)]))
    return x[keep], y[keep]


def roc_plot(curves: dict[str, tuple], marks: Sequence[tuple] = (), eer: dict[str, float] | None = None,
             title: str = "ROC (log FAR axis)", xlabel: str = "false accept rate (FMR / FPIR)",
             ylabel: str = "true accept rate (1 - FNMR / 1 - FNIR)",
             dashed: Collection[str] = ()) -> bytes:
    """ROC curves on a log-x axis from 1e-6 (or 1 / the negatives available) to 1.

    Parameters
    ----------
    curves : ``{name: (false_positive_rates, false_negative_rates, n_negatives[, unit])}``:
        aligned rate arrays (e.g. FMR and FNMR per threshold), the number of non-matching
        comparisons behind them and what those are called (``"impostor pairs"``). The
        smallest measurable false accept rate, ``1 / n_negatives``, is drawn as a dotted
        vertical line; rates of 0 cannot be drawn on a log axis and are left out.
    marks : ``(far, tar, text)`` operating points to annotate (e.g. TAR @ FAR 1e-3).
    eer : ``{name: equal error rate}``: drawn at ``(EER, 1 - EER)`` on the curve, with the
        line ``TAR = 1 - FAR`` where every curve meets its EER.
    dashed : names of curves drawn dashed (a baseline beside the model).

    Returns
    -------
    PNG bytes.

    Examples
    --------
    >>> png = roc_plot({"1:1": ([1e-3, 0.01, 0.5], [0.3, 0.1, 0.0], 1000, "impostor pairs")},
    ...                marks=[(0.01, 0.9, "FAR 0.01")], eer={"1:1": 0.08})
    >>> png[:4] == b"\\x89PNG"
    True
    """
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.5, 6.0))
    floors = [1.0 / c[2] for c in curves.values() if c[2]]
    left = max(1e-6, 10.0 ** math.floor(math.log10(min(floors)))) if floors else 1e-6
    low = 1.0
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    floors_drawn: set = set()
    for (name, (fp, fn, n, *unit)), color in zip(curves.items(), colors, strict=False):
        x, y = roc_points(fp, fn)
        vis = x >= left
        if vis.any():
            low = min(low, float(y[vis].min()))
        x, y = _thin_log(x[x > 0], y[x > 0])
        ax.plot(x, y, "--" if name in dashed else "-", color=color, label=name)
        if n and 1.0 / n >= left and (n, *unit) not in floors_drawn:  # once per count
            floors_drawn.add((n, *unit))
            ax.axvline(1.0 / n, color=color, linestyle=":", linewidth=1.2,
                       label=f"smallest measurable: 1 / {n:,} {unit[0] if unit else 'negatives'}")
        if eer and eer.get(name) is not None:
            e = float(eer[name])
            ax.plot([max(e, left)], [1 - e], "D", color="tab:red", markersize=6, zorder=3,
                    label=f"EER {e:.2%}" + (f" ({name})" if len(eer) > 1 else ""))
    ylo = max(0.0, math.floor((low - 0.02) * 10) / 10)
    for mark_x, y, text in marks:
        px = max(float(mark_x), left)
        ax.plot([px], [y], "ko", markersize=4, zorder=3)
        below = y - ylo > 0.1 * (1.005 - ylo)  # room under the point for its label
        ax.annotate(text, (px, float(y)), textcoords="offset points", xytext=(5, -11 if below else 4),
                    fontsize=7)
    if eer:
        g = np.logspace(math.log10(left), 0, 200)
        ax.plot(g, 1 - g, color="0.6", linestyle="--", linewidth=0.8, label="TAR = 1 - FAR (EER line)")
    ax.set_xscale("log")
    ax.set_xlim(left, 1.0)
    ax.set_ylim(ylo, 1.005)
    ax.grid(alpha=0.35, which="major")
    ax.grid(alpha=0.1, which="minor", axis="x")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    if curves:
        ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.13), ncol=1, frameon=False)
    return _png(fig)


def cmc_plot(cmc: np.ndarray, baseline: np.ndarray | None = None,
             names: tuple[str, str] = ("model", "baseline")) -> bytes:
    """Rank-k identification rate for k = 1..len(cmc), with a baseline's curve dashed."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.5, 4.0))
    k = np.arange(1, len(cmc) + 1)
    ax.plot(k, cmc, "o-", label=names[0])
    low = float(np.min(cmc))
    if baseline is not None:
        ax.plot(np.arange(1, len(baseline) + 1), baseline, "s--", label=names[1])
        low = min(low, float(np.min(baseline)))
        ax.legend(fontsize=8)
    ax.set_xticks(k)
    ax.set_ylim(min(0.9 * low, 0.95), 1.0)
    ax.set_xlabel("rank k")
    ax.set_ylabel("identification rate (true class in top k)")
    ax.set_title("CMC (mated searches)")
    ax.grid(alpha=0.3)
    return _png(fig)


def _score_axes(ax, mated, non_mated, threshold, label, title):
    parts = [s[np.isfinite(s)] for s in (mated, non_mated) if s is not None and len(s)]
    parts = [p for p in parts if p.size]
    lo = min(float(p.min()) for p in parts) if parts else -1.0
    bins = np.linspace(min(lo, 0.999), 1.0, 60)
    ax.hist(mated[np.isfinite(mated)], bins=bins, alpha=0.6, density=True,
            label="mated, correct rank-1")
    if non_mated is not None and len(non_mated):
        ax.hist(non_mated[np.isfinite(non_mated)], bins=bins, alpha=0.6, density=True,
                label="non-mated (best score)")
    if threshold is not None:
        ax.axvline(threshold, color="k", linestyle="--", label=label)
    ax.set_xlabel("rank-1 cosine score")
    ax.set_ylabel("density")
    ax.set_title(title)
    ax.legend(fontsize=8)


def score_plot(mated: np.ndarray, non_mated: np.ndarray | None, threshold: float | None,
               label: str = "threshold",
               baseline: tuple[np.ndarray, np.ndarray | None, float | None, str] | None = None,
               names: tuple[str, str] = ("model", "baseline")) -> bytes:
    """Histograms of rank-1 scores: mated correct vs non-mated, with the threshold line.

    ``baseline`` = ``(mated, non_mated, threshold, label)`` of a baseline adds a second
    panel below (its scores live on another scale, so they are not overlaid).
    """
    plt = _plt()
    if baseline is None:
        fig, ax = plt.subplots(figsize=(6.5, 4.0))
        _score_axes(ax, mated, non_mated, threshold, label, "Score distributions")
    else:
        fig, (ax, bx) = plt.subplots(2, 1, figsize=(6.5, 7.0))
        _score_axes(ax, mated, non_mated, threshold, label, f"Score distributions: {names[0]}")
        _score_axes(bx, *baseline, f"Score distributions: {names[1]}")
    return _png(fig)


def f1_histogram(f1: np.ndarray, baseline: np.ndarray | None = None,
                 names: tuple[str, str] = ("model", "baseline")) -> bytes:
    """Distribution of per-class F1 (NaN values left out), a baseline's as an outline.

    The title states no count of undefined values: the report's tables are the one
    place that counts classes with an undefined precision (a class never predicted has
    precision undefined but F1 = 0, so it is in the bar at 0 here).
    """
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.5, 4.0))
    bins = np.linspace(0, 1, 21)
    ax.hist(f1[~np.isnan(f1)], bins=bins, color="tab:green", alpha=0.7, label=names[0])
    if baseline is not None:
        ax.hist(baseline[~np.isnan(baseline)], bins=bins, histtype="step", color="k",
                linestyle="--", linewidth=1.5, label=names[1])
        ax.legend(fontsize=8)
    ax.set_xlabel("per-class F1 (rank-1)")
    ax.set_ylabel("classes")
    ax.set_title(f"Per-class F1 ({int((~np.isnan(f1)).sum()):,} classes)")
    return _png(fig)


def gallery_size_plot(points: list[dict], fpir: float | None = None) -> bytes:
    """Rank-1 accuracy and FNIR@FPIR against the number of enrolled classes (log x), one FNIR
    line per decision rule when the points carry ``fnir_by_decision``."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    n = [p["gallery_size"] for p in points]
    ax.plot(n, [p["top1"] for p in points], "o-", label="rank-1 accuracy (closed set)")
    rules = next((list(p["fnir_by_decision"]) for p in points if p.get("fnir_by_decision")), [None])
    for rule, marker in zip(rules, ("s-", "^--", "v:", "d-."), strict=False):
        fn = [(p["gallery_size"], p["fnir_by_decision"][rule] if rule else p["fnir"]) for p in points
              if (p.get("fnir_by_decision", {}).get(rule) if rule else p.get("fnir")) is not None]
        if fn:
            name = f"FNIR @ FPIR {fpir:g}" if fpir else "FNIR"
            ax.plot(*zip(*fn, strict=True), marker, label=f"{name}, {rule} rule" if rule else name)
    ax.set_xscale("log")
    ax.set_ylim(0, 1)
    ax.set_xlabel("enrolled classes (mated + distractors)")
    ax.set_ylabel("rate")
    ax.set_title("Gallery-size scaling")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    return _png(fig)


def image_png(image) -> bytes:
    """A ``(1, H, W)`` or ``(H, W)`` image in [0, 1] (tensor or array) as PNG bytes."""
    from PIL import Image

    a = np.asarray(image, dtype=np.float32).squeeze()
    buf = io.BytesIO()
    Image.fromarray((np.clip(a, 0, 1) * 255).astype(np.uint8), mode="L").save(buf, format="PNG")
    return buf.getvalue()
