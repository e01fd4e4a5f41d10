"""PNG plots of evaluation results (matplotlib, Agg backend), returned as bytes.

DET curves use normal-deviate (probit) axes as in ISO/IEC 19795-1 and NIST FRVT/FRTE
reports: a straight line there means Gaussian-like score distributions, and the low
error rates that matter are spread out instead of squashed against an axis.
"""

from __future__ import annotations

import io
from statistics import NormalDist

import numpy as np

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
             title: str = "DET (normal-deviate axes)", marks: list[tuple] = ()) -> bytes:
    """DET curves ``{name: (false_positive_rates, false_negative_rates)}`` on probit axes.

    ``marks`` are ``(x, y, text)`` points to annotate (e.g. the operating threshold).
    """
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.5, 4.5))
    for name, (fp, fn) in curves.items():
        fp, fn = _thin(np.asarray(fp), np.asarray(fn))
        ax.plot(probit(fp), probit(fn), label=name)
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


def cmc_plot(cmc: np.ndarray) -> bytes:
    """Rank-k identification rate for k = 1..len(cmc)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.5, 4.0))
    k = np.arange(1, len(cmc) + 1)
    ax.plot(k, cmc, "o-")
    ax.set_xticks(k)
    ax.set_ylim(min(0.9 * float(np.min(cmc)), 0.95), 1.0)
    ax.set_xlabel("rank k")
    ax.set_ylabel("identification rate (true class in top k)")
    ax.set_title("CMC (mated searches)")
    ax.grid(alpha=0.3)
    return _png(fig)


def score_plot(mated: np.ndarray, non_mated: np.ndarray | None, threshold: float | None,
               label: str = "threshold") -> bytes:
    """Histograms of rank-1 scores: mated correct vs non-mated, with the threshold line."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.5, 4.0))
    parts = [s[np.isfinite(s)] for s in (mated, non_mated) if s is not None and len(s)]
    lo = min(float(p.min()) for p in parts if p.size) if parts else -1.0
    bins = np.linspace(lo, 1.0, 60)
    ax.hist(mated[np.isfinite(mated)], bins=bins, alpha=0.6, density=True,
            label="mated, correct rank-1")
    if non_mated is not None and len(non_mated):
        ax.hist(non_mated[np.isfinite(non_mated)], bins=bins, alpha=0.6, density=True,
                label="non-mated (best score)")
    if threshold is not None:
        ax.axvline(threshold, color="k", linestyle="--", label=label)
    ax.set_xlabel("rank-1 cosine score")
    ax.set_ylabel("density")
    ax.set_title("Score distributions")
    ax.legend(fontsize=8)
    return _png(fig)


def f1_histogram(f1: np.ndarray) -> bytes:
    """Distribution of per-class F1 (undefined values left out, their count in the title)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.5, 4.0))
    ok = ~np.isnan(f1)
    ax.hist(f1[ok], bins=np.linspace(0, 1, 21), color="tab:green", alpha=0.8)
    ax.set_xlabel("per-class F1 (rank-1)")
    ax.set_ylabel("classes")
    ax.set_title(f"F1 over {int(ok.sum()):,} classes ({int((~ok).sum())} undefined)")
    return _png(fig)


def gallery_size_plot(points: list[dict], fpir: float | None = None) -> bytes:
    """Rank-1 accuracy and FNIR@FPIR against the number of enrolled classes (log x)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    n = [p["gallery_size"] for p in points]
    ax.plot(n, [p["top1"] for p in points], "o-", label="rank-1 accuracy (closed set)")
    fn = [(p["gallery_size"], p["fnir"]) for p in points if p.get("fnir") is not None]
    if fn:
        ax.plot(*zip(*fn, strict=True), "s-", label=f"FNIR @ FPIR {fpir:g}" if fpir else "FNIR")
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
