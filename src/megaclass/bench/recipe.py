"""``bench recipe``: what each training change does to speed and to unseen-class accuracy.

Every variant is a named recipe with some options changed (:mod:`megaclass.train.recipes`),
trained for the same number of steps on this machine, one after the other, then scored on
the same rendered images of the demo's open-set protocol
(:mod:`megaclass.evaluate.protocol`: enroll unseen classes, calibrate at FPIR 1 %,
identify). Speed is reported as a ratio to the ``base`` variant measured in the same run (a run
shared with other work on the machine gives noisy ratios: run it on a quiet box). Variants
that only change speed (``SPEED_ONLY``: bf16 autocast, ``torch.compile``) train a few
steps and report no accuracy.
Results are appended to ``recipe_bench.json`` after each variant, so an interrupted run
continues where it stopped (``resume``); variants already measured are not trained again.
A variant in training checkpoints ten times (``runs/<variant>-<hash>`` under the output
folder, removed once its row is written), so an interrupted variant resumes from its last
checkpoint instead of step 0. With ``curve`` every checkpoint is scored too: the row's
``curve`` holds unseen-class accuracy against training seconds (accuracy vs time, and
whether the run had stopped improving).
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import TypedDict

import torch

from ..data.spec import open_source
from ..errors import ConfigError
from ..evaluate.protocol import OpenSetProtocol, score_encoder
from ..models import Encoder
from ..train import Trainer
from ..train.checkpoint import load_state
from ..train.recipes import Recipe, recipe
from . import run_state_dir

RESNET = "resnet:widths={w};blocks={b}"

#: Variants that change only speed (the same math up to float rounding): trained for
#: ``SPEED_STEPS`` steps and reported without accuracy.
SPEED_ONLY = {"bf16 autocast", "torch.compile"}
SPEED_STEPS = 60

#: The variants of the comparison: name -> changes to the base recipe.
VARIANTS: dict[str, dict] = {
    "base": {},
    "bf16 autocast": {"precision": "bf16"},
    "torch.compile": {"compile": True},
    "20k classes": {"data": "glyphs:0-20000", "samples_per_class": 32},
    "CosFace s=30 m=0.35": {"scale": 30.0, "margin": 0.35},
    "ArcFace s=16 m=0.3": {"head": "arcface", "margin": 0.3},
    "wider (48,96,192)": {"backbone": RESNET.format(w="48,96,192", b=1)},
    "deeper (2 blocks)": {"backbone": RESNET.format(w="32,64,128", b=2)},
    "dim 128": {"dim": 128},  # the demo recipe's embedding before 2026-11-30 (now 256)
    "augment handwriting": {"augment": "handwriting"},
    "Partial FC, 100k classes": {"data": "glyphs:0-100000", "samples_per_class": 8, "head": "partial_fc",
                                 "head_options": {"sample_rate": 0.1}},
}

#: End-to-end head comparison (the head issue): encoder + head trained together on 10k
#: (32 drawings each) or 100k classes (8 each) for the same steps, each head with its
#: defaults, scored on unseen classes like every variant. Run them by name
#: (``--variant "head softmax, 10k"``).
HEAD_VARIANTS: dict[str, dict] = {
    f"head {h}, {size}": {"data": f"glyphs:0-{classes}", "samples_per_class": per, "head": h,
                          **({"scale": None, "margin": None} if h in ("softmax", "adaptive") else {})}
    for size, classes, per in (("10k", 10_000, 32), ("100k", 100_000, 8))
    for h in ("softmax", "cosface", "partial_fc", "adaptive", "hierarchical")
}
VARIANTS.update(HEAD_VARIANTS)


class RecipeReport(TypedDict):
    """``recipe_bench.json``: the settings it was measured with, one row per variant."""

    settings: dict[str, object]
    rows: list[dict]


def variant(base: Recipe, name: str) -> Recipe:
    if name not in VARIANTS:
        raise ConfigError(f"unknown variant {name!r}; choose from: {', '.join(VARIANTS)}")
    changes = dict(VARIANTS[name])
    return base.with_(name, data=changes.pop("data", None),
                      samples_per_class=changes.pop("samples_per_class", None), **changes)


def run_recipe_bench(out: str | Path, *, base: str = "demo", variants: list[str] | None = None,
                     steps: int | None = None, enrolled: int = 5000, threads: int | None = None,
                     resume: bool = True, curve: bool = False, log=print) -> RecipeReport:
    """Train and score each variant; returns (and writes) ``recipe_bench.json``.

    ``curve``: also score the ten checkpoints along each training run (row ``curve``)."""
    log = log or (lambda *a: None)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "recipe_bench.json"
    names = variants or [v for v in VARIANTS if v not in HEAD_VARIANTS]  # the head runs: by name
    base_recipe = recipe(base)
    for name in names:
        variant(base_recipe, name)  # unknown names fail before anything is trained
    total_steps = int(steps or base_recipe.options.get("steps") or 0)
    if total_steps < 1:
        raise ConfigError(f"recipe {base!r} gives no step count: pass steps")
    settings: dict[str, object] = {"base": base, "steps": total_steps, "enrolled": enrolled,
                                   "base_options": {k: v for k, v in base_recipe.options.items()
                                                    if k not in ("steps", "checkpoint_every")}}
    report: RecipeReport = {"settings": settings, "rows": []}
    if resume and path.is_file():
        old = json.loads(path.read_text())
        if old.get("settings") == settings:
            report = old
    if threads:
        torch.set_num_threads(threads)
    done = {r["variant"] for r in report["rows"]}
    protocol = OpenSetProtocol(enrolled=enrolled).render()
    for name in names:
        if name in done:
            log(f"{name}: measured before, kept")
            continue
        r = variant(base_recipe, name)
        speed_only = name in SPEED_ONLY
        n_steps = min(SPEED_STEPS, total_steps) if speed_only else total_steps
        options = {**r.options, "steps": n_steps, "progress": False}
        options.pop("checkpoint_every", None)
        run_dir = None
        if not speed_only:  # resumable: ten checkpoints along the run
            run_dir = run_state_dir(out, _slug(name), {"variant": name, "settings": settings,
                                                       "options": options})
            options.update(checkpoint_dir=str(run_dir), checkpoint_every=max(1, -(-n_steps // 10)),
                           resume=True)
        log(f"{name}: training {n_steps} steps on {r.data}{' (speed only)' if speed_only else ''} ...")
        source = open_source(r.data, samples_per_class=r.samples_per_class)
        t = time.perf_counter()
        trainer = Trainer(source, **options)
        encoder = trainer.fit().encoder_
        metrics = {} if speed_only else score_encoder(encoder, protocol)
        last = trainer.history_[-1]
        train_s = float(last.get("seconds", trainer.seconds_))  # across resumed sessions
        batch = int(encoder.config.extra["trained_with"]["batch_size"])
        row = {"variant": name, "changes": VARIANTS.get(name, {}), "data": r.data, "steps": n_steps,
               "images_per_second": n_steps * batch / max(train_s, 1e-9),
               "train_seconds": train_s, "final_loss": last["loss"], **metrics,
               "wall_seconds": time.perf_counter() - t}
        if curve and run_dir is not None:
            row["curve"] = _score_checkpoints(run_dir, protocol, n_steps, metrics, train_s, log=log)
        report["rows"].append(row)
        _ratios(report)
        path.write_text(json.dumps(report, indent=2))
        if run_dir is not None:
            shutil.rmtree(run_dir, ignore_errors=True)
        log(f"{name}: {row['images_per_second']:.0f} img/s" + (
            "" if speed_only else f", top-1 {row['top1']:.1%}, FNIR@FPIR1% {row['fnir']:.1%}"))
    _ratios(report)
    path.write_text(json.dumps(report, indent=2))
    if any(r.get("curve") for r in report["rows"]):
        plot_curves(report, out / "recipe_curves.png")
    return report


def plot_curves(report: RecipeReport, path: Path) -> None:
    """Unseen-class top-1 vs training seconds of the rows with a ``curve``, one panel per dataset."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in report["rows"] if r.get("curve")]
    datas = list(dict.fromkeys(r["data"] for r in rows))
    fig, axes = plt.subplots(1, len(datas), figsize=(5.5 * len(datas), 4.2), squeeze=False)
    names = list(dict.fromkeys(r["variant"].split(",")[0] for r in rows))
    colour = {n: f"C{i}" for i, n in enumerate(names)}  # one colour per variant family in every panel
    for ax, data in zip(axes[0], datas, strict=True):
        for r in (r for r in rows if r["data"] == data):
            c = r["curve"]
            ax.plot([p["seconds"] / 60 for p in c], [100 * p["top1"] for p in c], "o-", ms=3,
                    label=r["variant"], color=colour[r["variant"].split(",")[0]])
        ax.set_xlabel("training minutes (encoder + head)")
        ax.set_ylabel("top-1 on unseen classes (%)")
        ax.set_title(f"trained on {data}")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _slug(name: str) -> str:
    return "".join(ch if ch.isalnum() else "-" for ch in name.lower()).strip("-")


def _score_checkpoints(run_dir: Path, protocol: OpenSetProtocol, steps: int, final: dict,
                       final_seconds: float, log=print) -> list[dict]:
    """Unseen-class accuracy of every checkpoint of a run: ``[{step, seconds, top1, ...}]``."""
    points = []
    for ckpt in sorted(run_dir.glob("step-*")):
        _, info = load_state(ckpt)
        step = int(info["step"])
        if step >= steps:
            continue  # the final model, scored already
        metrics = score_encoder(Encoder.load(ckpt / "encoder"), protocol)
        seconds = float(info["history"][-1].get("seconds", 0.0)) if info.get("history") else 0.0
        points.append({"step": step, "seconds": seconds, **metrics})
        log(f"  step {step}: top-1 {metrics['top1']:.1%}")
    return points + [{"step": steps, "seconds": final_seconds, **final}]


def _ratios(report: RecipeReport) -> None:
    rows = report["rows"]
    base = next((r for r in rows if r["variant"] == "base"), rows[0] if rows else None)
    if base is None:
        return
    for r in rows:
        r["speed_vs_base"] = r["images_per_second"] / base["images_per_second"]
