"""Head accuracy, fairly: each head tuned, then trained to convergence on frozen features.

The question ``bench heads`` answers is which head to train at C classes. Speed and
memory come from :mod:`.heads`; this module measures what each head *learns*:

* **Features.** Glyph classes the shipped reference-v1 encoder (the default) never saw (ids from
  ``FIRST_ID``) are embedded once by that frozen encoder: ``train`` drawings per class to
  learn from, ``val`` to stop on and pick settings with, ``test`` to report. Cached as
  ``.npy`` files, filled chunk by chunk (an interrupted run resumes).
* **Sweep.** Per head, a small grid of optimizer x learning rate (and, for the plain
  softmax, the input scale) is trained for a short budget; the best validation top-1
  wins. Every head gets its own best settings instead of one shared optimizer. The
  hierarchical head's groups are k-means clusters of the classes' mean training features
  (with groups of arbitrary class ids, each group is a union of unrelated classes that
  one cosine vector cannot pick out: measured 8 % top-1 where the flat heads reach 89 %).
* **To convergence.** With the winning settings the head trains until validation top-1
  stops improving (``patience`` evaluations without a gain of ``min_gain``), then once
  more after a 10x learning-rate drop, or until a step/time cap -- the report says which.
  The accuracy-vs-training-time curve gives accuracy at equal wall-clock budgets and the
  time to reach a given accuracy; test top-1/top-5 are measured once, at the end.

With ``checkpoint_dir`` in its spec a run saves its state at every evaluation and a
second start continues from there (:mod:`.head_run_state`), so runs longer than a
session finish across sessions.

Each training run is a fresh subprocess (``python -m megaclass.bench.heads_accuracy``),
so its peak resident memory (``VmHWM``) is its own.
"""

from __future__ import annotations

import json
import math
import os
import statistics
import time
from pathlib import Path

import numpy as np

from . import BENCH_MODEL
from .workers import spawn_worker, worker_main

FIRST_ID = 10_000_000  # disjoint from the reference model's training classes (0-19,999)
SPLITS = {"train": 0, "val": 555, "test": 777}  # split -> drawing seed
SWEEP = {
    "sgd": (0.03, 0.1, 0.3, 1.0),
    "adam": (1e-3, 3e-3, 1e-2),
}
SOFTMAX_SCALES = (1.0, 4.0, 16.0)


def _vm_hwm() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


# -- features ------------------------------------------------------------------------
def glyph_features(folder, classes: int, *, model: str = BENCH_MODEL, per_split=None,
                   eval_stride: int = 1, chunk: int = 1000, log=print) -> Path:
    """Embed ``classes`` unseen glyph classes with the frozen ``model``; return the folder.

    Files: ``{split}_x.npy`` (classes * n, D) float32, class-major (class i's drawings are
    rows ``i*n .. i*n+n-1``), and ``meta.json``. A folder holding more classes is reused.
    ``eval_stride`` > 1 embeds validation and test drawings only for every
    ``eval_stride``-th class (classes 0, s, 2s, ...; row block ``j`` is class ``j*s``): the
    head still chooses among all classes, and at 1M classes the features cost the training
    drawings plus a sample to score on, not three splits of a million classes.
    """
    import torch

    from ..data.glyphs import GlyphSource
    from ..errors import ConfigError
    from ..models import load_encoder

    per_split = dict(per_split or {"train": 6, "val": 1, "test": 2})
    if classes < 2:
        raise ConfigError(f"the head comparison needs at least 2 classes, got {classes}")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    meta_path = folder / "meta.json"
    meta = json.loads(meta_path.read_text()) if meta_path.exists() else {}
    if eval_stride < 1:
        raise ConfigError(f"eval_stride must be >= 1, got {eval_stride}")
    if meta:
        meta.setdefault("eval_stride", 1)  # caches from before the option: every class
    want = {"model": model, "per_split": per_split, "first_id": FIRST_ID, "eval_stride": eval_stride}
    if {k: meta.get(k) for k in want} != want or meta.get("classes", 0) < classes:
        if meta.get("done", 0) and {k: meta.get(k) for k in want} == want:
            done = min(meta["done"], classes)  # grow an existing, compatible cache
        else:
            done = 0
        meta = {**want, "classes": classes, "done": done}
    if meta["done"] >= classes:
        return folder
    enc = load_encoder(model)
    meta["fingerprint"] = enc.fingerprint()
    dim = int(enc.config.dim)
    arrays = {}
    def blocks(split: str, c: int) -> int:  # class blocks a split holds for the first c classes
        return _blocks(c, _split_stride(split, eval_stride))

    for split, n in per_split.items():
        path = folder / f"{split}_x.npy"
        old = np.load(path, mmap_mode="r") if path.exists() else None
        if old is not None and old.shape == (blocks(split, classes) * n, dim):
            arrays[split] = np.load(path, mmap_mode="r+")
            continue
        new = np.lib.format.open_memmap(path.with_suffix(".tmp.npy"), mode="w+", dtype=np.float32,
                                        shape=(blocks(split, classes) * n, dim))
        if old is not None and meta["done"]:
            keep = blocks(split, meta["done"]) * n
            new[:keep] = old[:keep]
        del old
        new.flush()
        os.replace(path.with_suffix(".tmp.npy"), path)
        arrays[split] = np.load(path, mmap_mode="r+")
    started, first = time.perf_counter(), meta["done"]
    with torch.inference_mode():
        for lo in range(meta["done"], classes, chunk):
            hi = min(classes, lo + chunk)
            for split, n in per_split.items():
                b0, b1 = blocks(split, lo), blocks(split, hi)  # the blocks of classes j*step in [lo, hi)
                step = _split_stride(split, eval_stride)
                if b1 > b0:
                    imgs, _ = GlyphSource.batch(FIRST_ID + np.arange(b0, b1) * step, n, seed=SPLITS[split])
                    arrays[split][b0 * n: b1 * n] = enc.embed(imgs).numpy()
                    arrays[split].flush()
            meta["done"] = hi
            meta_path.write_text(json.dumps(meta, indent=1))
            rate = (meta["done"] - first) / max(time.perf_counter() - started, 1e-9)
            log and log(f"features: {meta['done']:,}/{classes:,} classes embedded "
                        f"({rate:,.0f} classes/s)")
    meta_path.write_text(json.dumps(meta, indent=1))
    return folder


def _load_split(folder: Path, split: str, classes: int) -> tuple[np.ndarray, int, int]:
    """The first ``classes`` classes' rows of ``split``, drawings per class, class stride."""
    meta = json.loads((folder / "meta.json").read_text())
    n = int(meta["per_split"][split])
    stride = _split_stride(split, int(meta.get("eval_stride", 1)))
    return np.load(folder / f"{split}_x.npy", mmap_mode="r")[: _blocks(classes, stride) * n], n, stride


def _split_stride(split: str, eval_stride: int) -> int:
    """Class stride of a split's rows: training drawings exist for every class."""
    return 1 if split == "train" else eval_stride


def _blocks(classes: int, stride: int) -> int:
    """Row blocks (classes 0, stride, 2*stride, ...) among the first ``classes`` classes."""
    return -(-classes // stride)


# -- one training run (in a worker process) -------------------------------------------
def _evaluate(head, x, y, k: int = 5, hits: list | None = None) -> tuple[float, float]:
    import torch

    head.eval()
    top1 = top5 = 0
    with torch.no_grad():
        for lo in range(0, x.shape[0], 1024):
            _, pred = head.predict(x[lo: lo + 1024], k=k)
            hit = pred == y[lo: lo + 1024, None]
            top1 += int(hit[:, 0].sum())
            top5 += int(hit.any(dim=1).sum())
            if hits is not None:
                hits.append(hit[:, 0])
    head.train()
    return top1 / x.shape[0], top5 / x.shape[0]


def _by_cluster(head, y, hit) -> dict | None:
    """Adaptive softmax: test top-1 of the classes in its head cluster and in each tail cluster."""
    import torch

    if getattr(head, "name", "") != "adaptive":
        return None
    rank = head.rank[y]
    edges = [0, *head.cutoffs, head.num_classes]
    return {f"cluster {i} (class ranks {lo}-{hi - 1})": float(hit[(rank >= lo) & (rank < hi)].float().mean())
            for i, (lo, hi) in enumerate(zip(edges[:-1], edges[1:], strict=True))
            if bool(((rank >= lo) & (rank < hi)).any())} if torch.is_tensor(hit) else None


def _subset(n_rows: int, n_per: int, keep: int, seed: int):
    rows = np.arange(n_rows)
    if keep < n_rows:
        rows = np.sort(np.random.default_rng(seed).choice(n_rows, keep, replace=False))
    return rows, rows // n_per


def _test_split(folder: Path, classes: int, samples: int) -> tuple[np.ndarray, np.ndarray]:
    """The test drawings every head is scored on (features, class ids): the same rows for all."""
    te, n_te, te_stride = _load_split(folder, "test", classes)
    rows, ty = _subset(te.shape[0], n_te, samples, 2)
    return np.asarray(te[rows]), ty * te_stride  # row block j holds class j * stride


def class_mean_baseline(folder: Path, classes: int, test_samples: int, chunk: int = 100_000) -> dict:
    """What the gallery does without training any head: each class's template is the mean of
    its training drawings' (unit) features, and a test drawing goes to the nearest template
    by cosine (exact search). Scored on the heads' own test drawings; CPU seconds to build the
    templates ("enrol") and to search."""
    import torch
    import torch.nn.functional as F

    t0 = time.process_time()
    tr, n_tr, _ = _load_split(Path(folder), "train", classes)
    means = torch.empty(classes, tr.shape[1])
    for a in range(0, classes, chunk):
        b = min(classes, a + chunk)
        rows = torch.from_numpy(np.array(tr[a * n_tr: b * n_tr])).view(b - a, n_tr, -1)
        means[a:b] = F.normalize(F.normalize(rows, dim=2).mean(dim=1), dim=1)
    enrol = time.process_time() - t0
    x, y = _test_split(Path(folder), classes, test_samples)
    q, y_t = F.normalize(torch.from_numpy(x), dim=1), torch.from_numpy(y)
    hit1 = hit5 = 0
    for a in range(0, len(q), 512):
        top = (q[a:a + 512] @ means.T).topk(min(5, classes), dim=1).indices
        hit1 += int((top[:, 0] == y_t[a:a + 512]).sum())
        hit5 += int((top == y_t[a:a + 512, None]).any(dim=1).sum())
    return {"classes": classes, "method": "class mean (gallery, no head training)",
            "test_top1": hit1 / len(q), "test_top5": hit5 / len(q), "test_samples": len(q),
            "enrol_cpu_seconds": enrol, "search_cpu_seconds": time.process_time() - t0 - enrol}


def train_worker(spec: dict) -> dict:
    """Train one head with one setting on cached features; return its curve and test accuracy."""
    import torch

    from ..heads import make_head
    from .head_run_state import load_run, save_run
    from .heads import state_bytes, train_step

    torch.manual_seed(spec.get("seed", 0))
    rng = np.random.default_rng(spec.get("seed", 0))
    folder, c, name = Path(spec["features"]), int(spec["classes"]), spec["head"]
    tr_rows_mapped, n_tr, _ = _load_split(folder, "train", c)
    tr = torch.from_numpy(np.array(tr_rows_mapped))  # a writable in-memory copy of the memory-mapped rows
    va, n_va, va_stride = _load_split(folder, "val", c)
    vr, vy = _subset(va.shape[0], n_va, spec["val_samples"], 1)
    vy = vy * va_stride  # row block j holds class j * stride
    val_x, val_y = torch.from_numpy(np.asarray(va[vr])), torch.from_numpy(vy)
    test_x, test_y = (torch.from_numpy(a) for a in _test_split(folder, c, spec["test_samples"]))
    opts = dict(spec.get("head_options", {}))
    if opts.pop("groups", None) == "kmeans":  # hierarchical: groups of similar classes, not id blocks
        opts["centers"] = tr.view(c, n_tr, -1).mean(dim=1)
    kind, lr = spec["optimizer"], float(spec["lr"])
    if name in ("partial_fc", "hierarchical"):
        opts.update(optimizer=kind, weight_decay=0.0)
    head = make_head(name, c, tr.shape[1], **opts)
    params = [p for p in head.parameters() if p.requires_grad]
    opt = None
    if params:
        opt = (torch.optim.SGD(params, lr=lr, momentum=0.9) if kind == "sgd"
               else torch.optim.Adam(params, lr=lr))
    # "cpu": the worker's own CPU time (one thread), so budgets hold on a box shared with other work
    clock = time.process_time if spec.get("clock") == "cpu" else time.perf_counter
    batch, m = int(spec["batch"]), 4
    curve, step_times, trained, step = [], [], 0.0, 0
    best, since, drops, stopped, done = -1.0, 0, 0, "max_steps", False
    run_dir = spec.get("checkpoint_dir")  # resumable: state saved at every evaluation
    run_spec = {k: v for k, v in spec.items() if k != "checkpoint_dir"}
    loop = load_run(run_dir, run_spec, head, opt) if run_dir else None
    if loop is not None:
        rng.bit_generator.state = loop["np_state"]
        curve, step_times, trained, step = loop["curve"], loop["step_times"], loop["trained"], loop["step"]
        best, since, drops, lr = loop["best"], loop["since"], loop["drops"], loop["lr"]
        stopped, done = loop["stopped"], loop["done"]
    while step < spec["max_steps"] and not done:
        classes = rng.choice(c, size=batch // m, replace=c < batch // m)
        idx = torch.from_numpy(np.repeat(classes, m) * n_tr + rng.integers(0, n_tr, batch))
        labels = torch.from_numpy(np.repeat(classes, m))
        t0 = clock()
        loss = train_step(head, opt, tr[idx], labels, lr)
        dt = clock() - t0
        step_times.append(dt)
        trained += dt
        step += 1
        if not math.isfinite(float(loss.detach())):
            stopped = "diverged"
            break
        if step % spec["eval_every"] == 0 or step == spec["max_steps"]:
            top1, _ = _evaluate(head, val_x, val_y)
            curve.append({"step": step, "seconds": round(trained, 3), "val_top1": top1,
                          "loss": round(float(loss.detach()), 4), "lr": lr})
            if top1 > best + spec["min_gain"]:
                best, since = top1, 0
            else:
                since += 1
            if since >= spec["patience"]:
                if drops == 0 and spec.get("lr_drop", True):
                    drops, since, lr = 1, 0, lr * 0.1
                    if opt is not None:
                        for g in opt.param_groups:
                            g["lr"] = lr
                else:
                    stopped, done = "plateau", True
            if not done and trained >= spec["max_seconds"]:
                stopped, done = "max_seconds", True
            if run_dir:
                save_run(run_dir, run_spec, head, opt, np_state=dict(rng.bit_generator.state),
                         loop={"step": step, "trained": trained, "step_times": step_times, "curve": curve,
                               "best": best, "since": since, "drops": drops, "lr": lr,
                               "stopped": stopped, "done": done})
    hits: list = []
    top1, top5 = _evaluate(head, test_x, test_y, hits=hits)
    clusters = _by_cluster(head, test_y, torch.cat(hits))
    state = state_bytes(head, opt)
    return {"curve": curve, "best_val_top1": max((p["val_top1"] for p in curve), default=0.0),
            "test_top1": top1, "test_top5": top5, "steps": step, "train_seconds": trained,
            "median_step_s": statistics.median(step_times) if step_times else None,
            "stopped_by": stopped, "clock": spec.get("clock", "wall"), "peak_rss_bytes": _vm_hwm(),
            "state_bytes": state,
            "test_samples": int(test_y.numel()), "val_samples": int(val_y.numel()),
            **({"test_top1_by_cluster": clusters} if clusters else {})}


def _spawn(spec: dict, timeout: float) -> dict:
    return spawn_worker("megaclass.bench.heads_accuracy", spec, timeout)


# -- the protocol ----------------------------------------------------------------------
def sweep_grid(head: str) -> list[dict]:
    """The settings tried for ``head``: optimizer x learning rate (x input scale for softmax)."""
    grid = [{"optimizer": k, "lr": lr, "head_options": {}} for k, lrs in SWEEP.items() for lr in lrs]
    if head == "hierarchical":  # groups = k-means of the classes' mean training features
        grid = [{**g, "head_options": {"groups": "kmeans"}} for g in grid]
    if head == "softmax":
        grid = [{**g, "head_options": {"scale": s}} for g in grid for s in SOFTMAX_SCALES]
    return grid


def accuracy_at(curve: list[dict], seconds: float) -> float | None:
    """Validation top-1 of the last evaluation within ``seconds`` of training, else None."""
    pts = [p["val_top1"] for p in curve if p["seconds"] <= seconds]
    return max(pts) if pts else None


def time_to(curve: list[dict], top1: float) -> float | None:
    """Training seconds until validation top-1 first reached ``top1``, else None."""
    return next((p["seconds"] for p in curve if p["val_top1"] >= top1), None)


def main(argv: list[str] | None = None) -> None:
    """Worker entry point: ``python -m megaclass.bench.heads_accuracy '<json spec>'`` prints one JSON line."""
    worker_main(train_worker, argv)


if __name__ == "__main__":
    main()
