"""The head comparison's protocol: sweep each head's settings, then train each to convergence.

Runs :func:`megaclass.bench.heads_accuracy.train_worker` in subprocesses (see that module
for the features and the stopping rule) and summarises: per class count and head, test
top-1/top-5 after convergence, validation top-1 at equal wall-clock budgets, time to
reach a common accuracy, step time and peak memory; a plot of accuracy vs training time.
Beside the heads, ``class_mean``: what the gallery does with no head trained (each class's
mean feature as its template, nearest by cosine), on the same test drawings.

``quick=True`` shrinks everything (200 classes, a two-point sweep, tens of steps) so a
test can run the whole protocol in well under a minute.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

from . import BENCH_MODEL, run_state_dir
from .heads_accuracy import (
    SOFTMAX_SCALES,
    SWEEP,
    accuracy_at,
    class_mean_baseline,
    glyph_features,
    sweep_grid,
    time_to,
)
from .workers import spawn_worker

WORKER = "megaclass.bench.heads_accuracy"

BUDGETS_S = (10.0, 60.0, 300.0)
QUICK = {"sweep_steps": 30, "eval_every": 10, "max_steps": 60, "max_seconds": 30.0, "patience": 2,
         "val_samples": 200, "test_samples": 400}
FULL = {"sweep_steps": 400, "eval_every": 100, "max_steps": 20_000, "max_seconds": 900.0, "patience": 3,
        "val_samples": 2000, "test_samples": 10_000}


def run_head_comparison(out, *, sizes=(10_000,), heads=("softmax", "cosface", "partial_fc", "adaptive",
                                                          "hierarchical"),
                        sweep_classes: int | None = None, quick: bool = False, model: str = BENCH_MODEL,
                        batch: int = 256, min_gain: float = 0.002, timeout: float = 3600.0,
                        settings: dict | None = None, clock: str = "wall", max_seconds: float | None = None,
                        eval_stride: int = 1, log=print) -> dict:
    """Sweep at ``sweep_classes`` (default the smallest size), converge at every size; write JSON + plot.

    ``clock="cpu"`` times training steps (and the wall-clock budgets) in the worker's own CPU
    seconds, so a box shared with other work does not shorten a head's budget; ``timeout`` stays
    wall-clock seconds per worker (give a loaded box more). A run that failed (timed out,
    crashed) is tried again when the comparison is resumed, from its last evaluation (its
    state is kept under ``out/runs/`` until it finishes); finished runs are kept.
    ``max_seconds`` replaces the protocol's training budget per run (900 s; the heads that
    do not reach their plateau within it are reported as stopped by the budget), e.g. to
    let dense heads converge at 100k classes. ``eval_stride``: validation and test drawings
    of every ``eval_stride``-th class only (see :func:`.heads_accuracy.glyph_features`), for
    class counts where three full splits would cost hours to embed (1M).
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    knobs = dict(QUICK if quick else FULL)
    if max_seconds is not None:
        knobs["max_seconds"] = float(max_seconds)
    sizes = sorted(int(c) for c in sizes)
    sweep_c = int(sweep_classes or sizes[0])
    feats = glyph_features(out / "features", max(sizes + [sweep_c]), model=model, eval_stride=eval_stride,
                           log=log)
    started = time.perf_counter()
    base = {"features": str(feats), "batch": batch, "min_gain": min_gain, "clock": clock,
            "val_samples": knobs["val_samples"], "test_samples": knobs["test_samples"]}
    report_path = out / "head_comparison.json"
    old = json.loads(report_path.read_text()) if report_path.exists() else {}
    same = old.get("config", {}).get("quick") == quick and old.get("config", {}).get("model") == model
    sweep = old.get("sweep", {}) if same else {}
    runs = old.get("runs", []) if same else []
    # the gallery's answer on the same features and test drawings: no head trained at all
    # (deterministic, so a resumed comparison keeps the one it measured: minutes at 1M)
    measured = {b["classes"]: b for b in old.get("class_mean", [])} if same else {}
    baselines = [measured.get(c) or class_mean_baseline(feats, c, int(knobs["test_samples"])) for c in sizes]
    chosen = dict(settings or {})
    for name in heads:
        if name in chosen:
            continue
        if name not in sweep or sweep[name].get("classes") != sweep_c:
            grid = sweep_grid(name)[:2] if quick else sweep_grid(name)
            tried = []
            for s in grid:
                spec = {**base, **s, "head": name, "classes": sweep_c, "max_steps": knobs["sweep_steps"],
                        "eval_every": knobs["sweep_steps"] // 4 or 1, "patience": 10**6,
                        "max_seconds": 10**9, "lr_drop": False}
                log and log(f"sweep C={sweep_c:,} {name}: {s['optimizer']} lr={s['lr']} {s['head_options']}")
                res = spawn_worker(WORKER, spec, timeout)
                tried.append({**s, "best_val_top1": res.get("best_val_top1"), "error": res.get("error"),
                              "stopped_by": res.get("stopped_by")})
            ok = [t for t in tried if t["best_val_top1"] is not None and t.get("stopped_by") != "diverged"]
            win = max(ok, key=lambda t: t["best_val_top1"]) if ok else None
            sweep[name] = {"classes": sweep_c, "steps": knobs["sweep_steps"], "tried": tried, "winner": win,
                           "winner_on_grid_edge": grid_edges(win)}
            _write(report_path, quick, model, knobs, sweep, runs, baselines, started)
        win = sweep[name]["winner"]
        if win is not None:
            chosen[name] = {k: win[k] for k in ("optimizer", "lr", "head_options")}
    for c in sizes:
        for name in heads:
            if name not in chosen or any(r["classes"] == c and r["head"] == name and not r.get("error")
                                         for r in runs):
                continue
            runs = [r for r in runs if not (r["classes"] == c and r["head"] == name)]  # a failed try goes
            spec = {**base, **chosen[name], "head": name, "classes": c, "max_steps": knobs["max_steps"],
                    "eval_every": knobs["eval_every"], "patience": knobs["patience"],
                    "max_seconds": knobs["max_seconds"]}
            # a run cut short (timeout, session end) continues from its last evaluation
            run_dir = run_state_dir(out, f"{name}-{c}", spec)
            log and log(f"converge C={c:,} {name} with {chosen[name]}")
            res = spawn_worker(WORKER, {**spec, "checkpoint_dir": str(run_dir)}, timeout)
            if not res.get("error"):
                shutil.rmtree(run_dir, ignore_errors=True)
            runs.append({"classes": c, "head": name, "settings": chosen[name], **res})
            _write(report_path, quick, model, knobs, sweep, runs, baselines, started)
    report = _write(report_path, quick, model, knobs, sweep, runs, baselines, started)
    _plot(runs, out / "head_comparison.png")
    return report


def grid_edges(win: dict | None) -> list[str]:
    """The winning setting's knobs that sit at an end of the sweep grid (a wider grid might do better)."""
    if not win:
        return []
    lrs = SWEEP[win["optimizer"]]
    edges = [f"lr {win['lr']:g} is the grid's {'largest' if win['lr'] == max(lrs) else 'smallest'}"]
    if min(lrs) < win["lr"] < max(lrs):
        edges = []
    scale = win.get("head_options", {}).get("scale")
    if scale is not None and scale in (min(SOFTMAX_SCALES), max(SOFTMAX_SCALES)):
        end = "largest" if scale == max(SOFTMAX_SCALES) else "smallest"
        edges.append(f"scale {scale:g} is the grid's {end} (with SGD, scale s and lr are one knob, s^2 * lr)")
    return edges


def summarise(runs: list[dict]) -> list[dict]:
    """Per class count: each head's converged test accuracy, budget accuracies and time to a common bar."""
    rows = []
    for c in sorted({r["classes"] for r in runs}):
        at_c = [r for r in runs if r["classes"] == c and "curve" in r]
        if not at_c:
            continue
        best = max(r["best_val_top1"] for r in at_c)
        bar = round(0.9 * best, 3)
        top = max(x["test_top1"] for x in at_c)
        for r in at_c:
            rows.append({"classes": c, "head": r["head"], "test_top1": r["test_top1"],
                         "test_top5": r["test_top5"],
                         "gap_to_best_points": round(100 * (top - r["test_top1"]), 2),
                         "stopped_by": r["stopped_by"], "steps": r["steps"],
                         "train_seconds": r["train_seconds"],
                         "median_step_ms": 1000 * r["median_step_s"], "peak_rss_bytes": r["peak_rss_bytes"],
                         "state_bytes": r["state_bytes"],
                         **{f"val_top1_at_{int(b)}s": accuracy_at(r["curve"], b) for b in BUDGETS_S},
                         "bar_val_top1": bar, "seconds_to_bar": time_to(r["curve"], bar),
                         "settings": r.get("settings")})
    return rows


def _write(path: Path, quick, model, knobs, sweep, runs, baselines, started) -> dict:
    report = {"config": {"quick": quick, "model": model, **knobs, "budgets_s": BUDGETS_S,
                         "protocol": "head-only, frozen reference-encoder features, unseen glyph classes"},
              "sweep": sweep, "runs": runs, "summary": summarise(runs), "class_mean": baselines,
              "seconds": time.perf_counter() - started}
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(report, indent=1))
    tmp.replace(path)
    return report


def _plot(runs: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    sizes = sorted({r["classes"] for r in runs if "curve" in r})
    if not sizes:
        return
    fig, axes = plt.subplots(1, len(sizes), figsize=(5.5 * len(sizes), 4.2), squeeze=False)
    heads = sorted({r["head"] for r in runs})
    colour = {h: f"C{i}" for i, h in enumerate(heads)}  # one colour per head in every panel
    for ax, c in zip(axes[0], sizes, strict=True):
        for r in sorted(runs, key=lambda r: heads.index(r["head"])):
            if r["classes"] == c and r.get("curve"):
                ax.plot([p["seconds"] for p in r["curve"]], [100 * p["val_top1"] for p in r["curve"]],
                        "-", label=r["head"], color=colour[r["head"]])
        ax.set_xscale("log")
        ax.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))  # 100, 200, 500, 1000, ...
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,g}"))
        ax.xaxis.set_minor_formatter(NullFormatter())  # the default minor labels overlap
        ax.set_xlabel("training seconds (head only, 1 thread)")
        ax.set_ylabel("validation top-1 (%)")
        ax.set_title(f"{c:,} classes")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
