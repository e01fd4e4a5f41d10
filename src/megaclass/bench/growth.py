"""``megaclass bench growth``: what do rounds of new classes do to accuracy and cost, per strategy?

A base model (encoder + CosFace head) is trained on ``base_classes`` glyph classes
(``base_samples`` drawings each); every strategy of :mod:`megaclass.growth` then starts
from a copy of it and its gallery, and ``rounds`` rounds each add ``classes_per_round``
new glyph classes with ``samples_per_class`` drawings each (few-shot). Within a round the
strategies run one after the other, in alternating order (ABCD, DCBA, ...), so load from
other work on the machine spreads over all of them; times are reported as ratios to
``enroll`` measured in the same round.

After each update, every class seen so far is searched with ``queries_per_class``
held-out drawings (another seed), and ``non_mated`` drawings of never-enrolled classes
give the FPIR threshold: top-1 and FNIR at FPIR ``fpir`` (default 1 %) on the *old*
classes (present before the round: forgetting), the *new* ones, the *base* ones and all.
Peak memory is the process RSS sampled every 10 ms during the update; the gallery size
is its classes and bytes on disk.

``compat=True`` adds the model-upgrade comparison (BCT, :mod:`megaclass.growth.bct`): an
upgraded model is trained on twice the base classes with and without
``compatible_with=<base model>``; unseen classes are enrolled with the old model and
searched with the new one (cross-model), next to old/old and new/new.

Example
-------
>>> report = run_growth_bench("/tmp/g", GrowthBenchConfig(base_classes=20, rounds=1,
...                           classes_per_round=5, base_steps=20))  # doctest: +SKIP
"""

from __future__ import annotations

import json
import shutil
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from .heads import _rss_bytes

DEFAULT_STRATEGIES = ("enroll", "imprint", "finetune", "retrain")
NON_MATED_FIRST_ID = 50_000_000
UNSEEN_FIRST_ID = 60_000_000


@dataclass
class GrowthBenchConfig:
    """Sizes and budgets of ``bench growth`` (defaults: ~15 minutes on 2 shared cores)."""

    base_classes: int = 100
    base_samples: int = 16
    rounds: int = 10
    classes_per_round: int = 20
    samples_per_class: int = 5
    queries_per_class: int = 3
    non_mated: int = 300
    strategies: tuple[str, ...] = DEFAULT_STRATEGIES
    base_steps: int = 150
    batch: int = 128
    dim: int = 64
    widths: tuple[int, ...] = (16, 32, 64)
    imprint_steps: int = 50
    finetune_steps: int = 25
    retrain_budget: float = 1.0
    exemplars: int = 2
    fpir: float = 0.01
    threads: int = 1
    compat: bool = False
    compat_unseen: int = 100
    seed: int = 0

    def validate(self) -> None:
        from ..errors import ConfigError
        from ..growth import STRATEGIES

        unknown = sorted(set(self.strategies) - set(STRATEGIES))
        if unknown:
            raise ConfigError(f"unknown strategies {unknown}; choose from {', '.join(STRATEGIES)}")
        if not self.strategies and not self.compat:
            raise ConfigError("bench growth needs at least one strategy (or --compat)")
        if self.base_classes < 2 or self.rounds < 0 or self.classes_per_round < 1:
            raise ConfigError("bench growth needs base_classes >= 2, rounds >= 0, classes_per_round >= 1")
        if min(self.base_samples, self.samples_per_class, self.queries_per_class) < 1:
            raise ConfigError("samples and queries per class must be >= 1")
        if self.non_mated * self.fpir < 1:
            raise ConfigError(f"FNIR at FPIR {self.fpir} needs >= {int(np.ceil(1 / self.fpir))} non-mated "
                              f"searches, got --non-mated {self.non_mated}")


class PeakRSS:
    """Context manager: the process's peak resident set size while inside (sampled every 10 ms)."""

    def __init__(self, interval: float = 0.01) -> None:
        self.interval = interval
        self.before = self.peak = 0
        self._stop = threading.Event()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak = max(self.peak, _rss_bytes())

    def __enter__(self) -> PeakRSS:
        self.before = self.peak = _rss_bytes()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _rss_bytes())


def _classes(ids, n: int, seed: int) -> dict:
    from ..data.glyphs import GlyphSource

    images, lab = GlyphSource.batch(np.asarray(list(ids)), n, seed=seed)
    return {f"glyph-{i}": images[lab == i] for i in ids}


def _queries(ids, n: int, seed: int):
    from ..data.glyphs import GlyphSource

    images, lab = GlyphSource.batch(np.asarray(list(ids)), n, seed=seed)
    return images, [f"glyph-{i}" for i in lab.tolist()], lab


def _strategy(name: str, cfg: GrowthBenchConfig):
    from ..growth import make_strategy

    options: dict[str, dict[str, float]] = {"imprint": {"steps": cfg.imprint_steps},
               "finetune": {"steps": cfg.finetune_steps, "seed": cfg.seed},
               "retrain": {"budget": cfg.retrain_budget}}
    return make_strategy(name, **options.get(name, {}))


def run_growth_bench(out, cfg: GrowthBenchConfig | None = None, *, log=print) -> dict:
    """Run the benchmark, write ``growth.json`` and ``growth.png`` under ``out``; return the report."""
    import torch

    from ..growth import GrowthState, Recipe, identification

    cfg = cfg or GrowthBenchConfig()
    cfg.validate()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    work = out / "work"
    shutil.rmtree(work, ignore_errors=True)
    torch.set_num_threads(cfg.threads)
    started = time.perf_counter()
    recipe = Recipe(steps=cfg.base_steps, batch_size=cfg.batch, dim=cfg.dim, widths=tuple(cfg.widths),
                    seed=cfg.seed)
    base_ids = range(cfg.base_classes)
    log and log(f"training the base model: {cfg.base_classes} classes x {cfg.base_samples} drawings, "
                f"{cfg.base_steps} steps")
    t0 = time.perf_counter()
    base = GrowthState.train(_classes(base_ids, cfg.base_samples, cfg.seed), work / "base", recipe,
                             exemplars=cfg.exemplars)
    base_seconds = time.perf_counter() - t0
    nm_images, _, _ = _queries(range(NON_MATED_FIRST_ID, NON_MATED_FIRST_ID + cfg.non_mated), 1, cfg.seed + 5)
    report: dict = {"config": asdict(cfg), "base_train_seconds": base_seconds, "rounds": [],
                    "machine": _machine()}
    states = {name: base.fork(work / name) for name in cfg.strategies}
    strategies = {name: _strategy(name, cfg) for name in cfg.strategies}
    report["strategies"] = {name: s.describe() for name, s in strategies.items()}
    seen = list(base_ids)
    q_seed = cfg.seed + 777
    base_q = _queries(base_ids, cfg.queries_per_class, q_seed)
    q_images, q_truth, q_ids = base_q
    if cfg.strategies:
        m = identification(base, q_images, q_truth, nm_images, fpir=cfg.fpir)
        report["rounds"].append({"round": 0, "classes": len(seen), "new_classes": 0,
                                 "results": {name: {"metrics": {"all": m["all"], "old": m["all"],
                                                                "base": m["all"]}}
                                             for name in cfg.strategies}})
    for r in range(1, cfg.rounds + 1 if cfg.strategies else 1):
        new_ids = list(range(cfg.base_classes + (r - 1) * cfg.classes_per_round,
                             cfg.base_classes + r * cfg.classes_per_round))
        new = _classes(new_ids, cfg.samples_per_class, cfg.seed)
        nq = _queries(new_ids, cfg.queries_per_class, q_seed)
        q_images = torch.cat([q_images, nq[0]])
        q_truth = q_truth + nq[1]
        q_ids = np.concatenate([q_ids, nq[2]])
        groups = {"old": np.isin(q_ids, seen), "new": np.isin(q_ids, new_ids),
                  "base": q_ids < cfg.base_classes}
        order = list(cfg.strategies) if r % 2 else list(reversed(cfg.strategies))
        results: dict[str, dict] = {}
        row = {"round": r, "classes": len(seen) + len(new_ids), "new_classes": len(new_ids), "order": order,
               "results": results}
        for name in order:
            with PeakRSS() as rss:
                t0 = time.perf_counter()
                states[name] = strategies[name].update(states[name], new)
                seconds = time.perf_counter() - t0
            metrics = identification(states[name], q_images, q_truth, nm_images, fpir=cfg.fpir, groups=groups)
            stats = states[name].live_gallery().stats()
            results[name] = {"update_seconds": seconds, "peak_rss_bytes": rss.peak,
                                    "rss_before_bytes": rss.before, "metrics": metrics,
                                    "gallery_classes": stats["classes"],
                                    "gallery_disk_bytes": stats["disk_bytes"],
                                    "exemplar_bytes": states[name].exemplar_bytes()}
            log and log(f"round {r}: {name:8s} {seconds:7.2f} s  top-1 old {metrics['old']['top1']:.3f} "
                        f"new {metrics['new']['top1']:.3f} all {metrics['all']['top1']:.3f}")
        ref = results.get("enroll")
        for res in results.values():
            if ref:
                res["time_vs_enroll"] = res["update_seconds"] / max(ref["update_seconds"], 1e-9)
        report["rounds"].append(row)
        seen += new_ids
    report["summary"] = _summary(report)
    for s in states.values():
        s.close()
    base.close()
    if cfg.compat:
        report["compat"] = run_compat(work / "compat", cfg, base, nm_images, log=log)
    shutil.rmtree(work, ignore_errors=True)
    report["seconds"] = time.perf_counter() - started
    (out / "growth.json").write_text(json.dumps(report, indent=1))
    if cfg.strategies and cfg.rounds:
        _plot(report, out / "growth.png")
    return report


def _summary(report: dict) -> dict:
    """Per strategy: total update time (and its ratio to enroll's), final top-1s, peak RSS."""
    rounds = [r for r in report["rounds"] if r["round"] > 0]
    out = {}
    for name in report["config"]["strategies"]:
        res = [r["results"][name] for r in rounds]
        if not res:
            continue
        total = sum(x["update_seconds"] for x in res)
        last = res[-1]["metrics"]
        out[name] = {"total_update_seconds": total,
                     "final": {g: last[g] for g in ("old", "new", "base", "all")},
                     "max_peak_rss_bytes": max(x["peak_rss_bytes"] for x in res),
                     "gallery_classes": res[-1]["gallery_classes"]}
    ref = out.get("enroll")
    for v in out.values():
        if ref:
            v["total_time_vs_enroll"] = v["total_update_seconds"] / max(ref["total_update_seconds"], 1e-9)
    return out


def run_compat(work: Path, cfg: GrowthBenchConfig, base, nm_images, *, log=print) -> dict:
    """Old model vs an upgraded model trained with and without BCT: same-model and cross-model
    top-1 / FNIR on classes none of the models trained on."""
    import copy

    import torch
    import torch.nn.functional as F

    from ..growth import Recipe
    from ..growth.state import embed

    work.mkdir(parents=True, exist_ok=True)
    old_dir = base.encoder.save(work / "old-model")
    upgrade_ids = range(2 * cfg.base_classes)
    samples = _classes(upgrade_ids, cfg.base_samples, cfg.seed)
    labels = list(samples)
    encoders = {"old": base.encoder}
    seconds = {}
    for name, extra in (("new", {}), ("new-bct", {"compatible_with": str(old_dir)})):
        recipe = copy.deepcopy(base.recipe)
        recipe.extra, recipe.seed = extra, cfg.seed + 1
        recipe.reference_images = cfg.base_classes * cfg.base_samples
        steps = recipe.steps_for(len(labels) * cfg.base_samples)
        log and log(f"compat: training {name} on {len(labels)} classes ({steps} steps)")
        t0 = time.perf_counter()
        encoders[name], _ = Recipe.train(recipe, samples, labels)
        seconds[name] = time.perf_counter() - t0
    unseen = range(UNSEEN_FIRST_ID, UNSEEN_FIRST_ID + cfg.compat_unseen)
    enrol = _classes(unseen, cfg.samples_per_class, cfg.seed)
    q_images, q_truth, _ = _queries(unseen, cfg.queries_per_class, cfg.seed + 777)
    glabels = list(enrol)

    def gallery(enc):
        return F.normalize(torch.stack([embed(enc, enrol[lb]).mean(0) for lb in glabels]), dim=1).numpy()

    galleries = {k: gallery(e) for k, e in encoders.items()}
    queries = {k: (embed(e, q_images).numpy(), embed(e, nm_images).numpy()) for k, e in encoders.items()}
    pairs = [("old", "old"), ("new", "new"), ("new", "old"), ("new-bct", "new-bct"), ("new-bct", "old")]
    rows = []
    for qm, gm in pairs:
        q, nm = queries[qm]
        rows.append({"query_model": qm, "gallery_model": gm, "cross_model": qm != gm,
                     **_vector_metrics(q, q_truth, galleries[gm], glabels, nm, cfg.fpir)})
    return {"upgrade_classes": len(labels), "unseen_classes": len(glabels), "train_seconds": seconds,
            "old_centres": "mean old-model embedding of each training class (up to 8 samples)",
            "pairs": rows}


def _vector_metrics(q: np.ndarray, truth: list[str], g: np.ndarray, glabels: list[str], nm: np.ndarray,
                    fpir: float) -> dict:
    from ..evaluate.open_set import fnir_at_fpirs

    s = q @ g.T
    best = s.argmax(1)
    correct = np.asarray(glabels, dtype=object)[best] == np.asarray(truth, dtype=object)
    r = fnir_at_fpirs(s.max(1), correct, (nm @ g.T).max(1), (fpir,))[0]
    return {"top1": float(correct.mean()), "fnir": r["fnir"]}


def _machine() -> dict:
    import os

    return {"cpus": os.cpu_count(), "load_average_at_start": list(os.getloadavg())}


def _plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 4, figsize=(17, 4.2))
    rounds = report["rounds"]
    later = [r for r in rounds if r["round"] > 0]
    xs, xl = [r["round"] for r in rounds], [r["round"] for r in later]
    for name in report["config"]["strategies"]:
        res, res_l = [r["results"][name] for r in rounds], [r["results"][name] for r in later]
        axes[0].plot(xs, [x["metrics"]["old"]["top1"] for x in res], "o-", label=name, ms=3)
        axes[1].plot(xl, [x["metrics"]["new"]["top1"] for x in res_l], "o-", label=name, ms=3)
        axes[2].plot(xs, [x["metrics"]["all"]["fnir"] for x in res], "o-", label=name, ms=3)
        axes[3].plot(xl, [x["update_seconds"] for x in res_l], "o-", label=name, ms=3)
    titles = ("top-1, old classes (forgetting)", "top-1, this round's new classes",
              f"FNIR @ FPIR {report['config']['fpir']:g}, all classes", "update wall time (s, log)")
    for ax, title in zip(axes, titles, strict=True):
        ax.set_xlabel("round")
        ax.set_title(title, fontsize=10)
        ax.grid(True, alpha=0.3)
    axes[3].set_yscale("log")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
