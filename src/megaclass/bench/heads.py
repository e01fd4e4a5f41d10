"""``megaclass bench heads``: how far does each head scale in classes on this machine?

For every class count C and head, a *fresh subprocess* (so peak memory does not mix)
builds the head and times head-only training steps on random unit embeddings (B x D,
m-per-class labels): forward, backward, optimizer step (SGD momentum 0.9 for every
head: dense heads via ``torch.optim.SGD``, ``partial_fc`` via its row-wise update).
The encoder is left out on purpose -- it costs the same for every head. Reported: median
step time after warm-up, peak RSS (``ru_maxrss``) and RSS before the head was built,
bytes of head state (parameters + buffers + optimizer state), ratios to the full softmax
of the same C measured in the same run.

Accuracy comes from :mod:`.heads_compare` (``acc_sizes``): every head tuned by its own
small sweep and trained to a validation plateau on frozen reference-encoder features of
unseen glyph classes, with accuracy at equal wall-clock budgets (``quick=True`` shrinks it
to seconds for tests).

Workers run with ``threads`` intra-op threads (default 1): on a 2-core box shared with
other work, 2 OpenMP threads made a 1k-class softmax step ~20x slower (300 ms vs 12 ms)
from spin-waiting, which would drown the differences between heads.

Example
-------
>>> report = run_heads_bench("/tmp/bench", sizes=[1000], heads=["softmax", "partial_fc"],
...                          steps=3, acc_sizes=(), ten_million=False, log=None)  # doctest: +SKIP
"""

from __future__ import annotations

import json
import math
import statistics
import time
from pathlib import Path

import numpy as np

from . import BENCH_MODEL
from .workers import spawn_worker, worker_main

DEFAULT_SIZES = (1_000, 10_000, 100_000, 1_000_000)
DEFAULT_HEADS = ("softmax", "cosface", "partial_fc", "adaptive", "hierarchical")
LR = 0.1


def _rss_bytes(field: str = "VmRSS") -> int:
    """Resident (``VmRSS``) or peak resident (``VmHWM``) bytes of this process.

    Not ``ru_maxrss``: a subprocess started by fork + exec inherits its parent's peak there.
    """
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    return 0


def _dense_estimate(c: int, d: int, b: int) -> int:
    return c * d * 4 * 3 + b * c * 4 * 4


def _build(name: str, c: int, d: int, spec: dict):
    import torch

    from ..heads import make_head

    opts = dict(spec.get("head_options", {}))
    if name == "partial_fc":
        opts.setdefault("optimizer", "sgd")
        opts.setdefault("weight_decay", 0.0)
    else:
        from ..heads.rowwise import check_memory

        check_memory(f"dense {name} head with {c:,} classes x {d}", _dense_estimate(c, d, spec["batch"]))
    head = make_head(name, c, d, **opts)
    params = list(head.parameters())
    opt = torch.optim.SGD(params, lr=LR, momentum=0.9) if params else None
    return head, opt


def train_step(head, opt, emb, labels, lr: float = LR):
    """One head-only step: loss, backward, the optimizer (if any) and the head's own sparse update."""
    loss = head(emb, labels)
    if opt is not None:
        opt.zero_grad(set_to_none=True)
    loss.backward()
    if opt is not None:
        opt.step()
    head.sparse_step(lr)
    return loss


def _m_per_class_labels(rng: np.random.Generator, c: int, b: int, m: int = 4) -> np.ndarray:
    classes = rng.choice(c, size=b // m, replace=False) if c >= b // m else rng.integers(0, c, b // m)
    return np.repeat(classes, m)


def state_bytes(head, opt) -> int:
    """Bytes of the head's parameters, buffers and optimizer state."""
    n = sum(t.numel() * t.element_size() for t in list(head.parameters()) + list(head.buffers()))
    if opt is not None:
        for st in opt.state.values():
            n += sum(v.numel() * v.element_size() for v in st.values() if hasattr(v, "numel"))
    return n


def _speed_worker(spec: dict) -> dict:
    import torch
    import torch.nn.functional as F

    c, d, b, name = spec["classes"], spec["dim"], spec["batch"], spec["head"]
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    base = _rss_bytes()
    head, opt = _build(name, c, d, spec)
    times = []
    for i in range(spec["warmup"] + spec["steps"]):
        emb = F.normalize(torch.randn(b, d), dim=1).requires_grad_()
        labels = torch.from_numpy(_m_per_class_labels(rng, c, b))
        t0 = time.perf_counter()
        loss = float(train_step(head, opt, emb, labels).detach())
        if i >= spec["warmup"]:
            times.append(time.perf_counter() - t0)
    return {"median_step_s": statistics.median(times), "step_times_s": times, "final_loss": loss,
            "peak_rss_bytes": _rss_bytes("VmHWM"),
            "rss_before_head_bytes": base, "state_bytes": state_bytes(head, opt)}


def _spawn(spec: dict, timeout: float) -> dict:
    return spawn_worker("megaclass.bench.heads", spec, timeout)


def run_heads_bench(out, *, sizes=DEFAULT_SIZES, heads=DEFAULT_HEADS, dim: int = 256, batch: int = 256,
                    steps: int = 10, warmup: int = 2, acc_sizes=(10_000,), quick: bool = False,
                    model: str = BENCH_MODEL, ten_million: bool = True, sample_rate: float = 0.1,
                    timeout: float = 1800.0, threads: int = 1, log=print) -> dict:
    """Run the benchmark, write ``heads.json`` and ``heads.png`` under ``out``; return the report.

    ``acc_sizes``: class counts of the accuracy comparison (:mod:`.heads_compare`, written to
    ``out/accuracy``); empty for speed and memory only.
    """
    from ..errors import ConfigError

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    heads = list(heads)
    if steps < 1 or warmup < 0 or not sizes or not heads:
        raise ConfigError("bench heads needs steps >= 1, warmup >= 0, at least one size and one head")
    base = {"dim": dim, "batch": batch, "steps": steps, "warmup": warmup, "threads": threads,
            "head_options": {}, "sample_rate": sample_rate}
    rows = []
    started = time.perf_counter()
    for c in sizes:
        for name in heads:
            spec = {**base, "mode": "speed", "classes": int(c), "head": name}
            if name == "partial_fc":
                spec["head_options"] = {"sample_rate": sample_rate}
            log and log(f"C={c:,} {name}: timing {steps} steps")
            rows.append({"classes": int(c), "dim": dim, "head": name, **_spawn(spec, timeout)})
    if ten_million:
        spec = {**base, "mode": "speed", "classes": 10_000_000, "dim": 128, "head": "partial_fc",
                "head_options": {"sample_rate": sample_rate, "dtype": "bfloat16"}, "steps": 3, "warmup": 1}
        log and log("C=10,000,000 D=128 partial_fc (bfloat16): 3 steps")
        rows.append({"classes": 10_000_000, "dim": 128, "head": "partial_fc", "dtype": "bfloat16",
                     **_spawn(spec, timeout)})
    comparison = None
    if acc_sizes:
        from .heads_compare import run_head_comparison

        comparison = run_head_comparison(out / "accuracy", sizes=acc_sizes, heads=heads, quick=quick,
                                         model=model, timeout=timeout, log=log)
        for row in comparison["summary"]:
            match = next((r for r in rows if r["classes"] == row["classes"] and r["head"] == row["head"]
                          and r["dim"] == dim), None)
            if match is not None:
                match.update(top1=row["test_top1"], top5=row["test_top5"])
    _ratios(rows)
    report = {"config": {**base, "sizes": [int(c) for c in sizes], "heads": heads,
                         "acc_sizes": [int(c) for c in acc_sizes], "quick": quick,
                         "optimizer": "speed: SGD momentum 0.9, lr 0.1 (all heads); accuracy: per-head sweep",
                         "torch_threads": threads,
                         "step": "head-only: random unit embeddings, m-per-class labels (4 per class)"},
              "results": rows, "targets": _targets(rows, sample_rate, comparison),
              "accuracy": comparison, "seconds": time.perf_counter() - started}
    (out / "heads.json").write_text(json.dumps(report, indent=1))
    _plot(rows, out / "heads.png")
    return report


def _ratios(rows: list[dict]) -> None:
    for r in rows:
        ref = next((x for x in rows if x["head"] == "softmax" and x["classes"] == r["classes"]
                    and x["dim"] == r["dim"] and "median_step_s" in x), None)
        if "median_step_s" in r and ref:
            r["speedup_vs_softmax"] = ref["median_step_s"] / r["median_step_s"]
            r["peak_rss_vs_softmax"] = r["peak_rss_bytes"] / ref["peak_rss_bytes"]
        if "peak_rss_bytes" in r and r.get("state_bytes"):
            r["peak_rss_over_state"] = r["peak_rss_bytes"] / r["state_bytes"]
            r["rss_growth_over_state"] = (r["peak_rss_bytes"] - r["rss_before_head_bytes"]) / r["state_bytes"]


def _targets(rows: list[dict], rate: float, comparison: dict | None = None) -> dict:
    def find(head, c, dim=256):
        return next((r for r in rows if r["head"] == head and r["classes"] == c and r["dim"] == dim), {})

    p1m = find("partial_fc", 1_000_000)
    t10m = next((r for r in rows if r["classes"] == 10_000_000), {})
    acc = {(r["head"], r["classes"]): r for r in (comparison or {}).get("summary", [])}
    p10k, c10k = acc.get(("partial_fc", 10_000), {}), acc.get(("cosface", 10_000), {})
    gap = (c10k["test_top1"] - p10k["test_top1"]) * 100 if p10k and c10k else None
    at10k = [r for (_, c), r in acc.items() if c == 10_000]
    worst = max((r["gap_to_best_points"] for r in at10k), default=None)
    return {
        "pfc_speedup_at_1m": {"target": ">= 8", "measured": p1m.get("speedup_vs_softmax")},
        "pfc_peak_rss_over_state_at_1m": {"target": "<= 1.25", "measured": p1m.get("peak_rss_over_state"),
                                          "growth_over_state": p1m.get("rss_growth_over_state")},
        "pfc_top1_gap_vs_cosface_at_10k_points": {"target": "<= 1", "measured": gap},
        "every_head_within_5_points_of_best_at_10k": {"target": "<= 5", "measured": worst},
        "ten_million_x128_bf16_trains": {"target": "a few steps in 24 GiB",
                                         "measured": {k: t10m.get(k) for k in
                                                      ("median_step_s", "peak_rss_bytes", "error")}},
        "sample_rate": rate,
    }


def _plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for name in sorted({r["head"] for r in rows}):
        pts = sorted((r["classes"], r["median_step_s"], r["peak_rss_bytes"]) for r in rows
                     if r["head"] == name and "median_step_s" in r and r["dim"] == rows[0]["dim"])
        if not pts:
            continue
        cs = [p[0] for p in pts]
        axes[0].plot(cs, [p[1] * 1000 for p in pts], "o-", label=name)
        axes[1].plot(cs, [p[2] / 2**20 for p in pts], "o-", label=name)
    for ax, title in zip(axes, ("median step time (ms)", "peak RSS (MiB)"), strict=True):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("classes C")
        ax.set_title(title)
        ax.grid(True, which="both", alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def format_bytes(n: float | None) -> str:
    if n is None or (isinstance(n, float) and math.isnan(n)):
        return "-"
    return f"{n / 2**20:,.0f} MiB" if n < 2**30 else f"{n / 2**30:,.2f} GiB"


def main(argv: list[str] | None = None) -> None:
    """Worker entry point: ``python -m megaclass.bench.heads '<json spec>'`` prints one JSON line."""
    worker_main(_speed_worker, argv)


if __name__ == "__main__":
    main()
