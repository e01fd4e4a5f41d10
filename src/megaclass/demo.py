"""The main job on built-in data: train, enroll unseen classes, identify with rejection.

1. Train an encoder (CosFace head) on glyph classes 0..1999.
2. Enroll 5,000 glyph classes the encoder never saw (ids 100000..104999), 5
   samples each, into a fresh gallery: no retraining.
3. Calibrate the threshold for FPIR = 1 % on non-mated searches of 1,000 other
   never-enrolled classes (ids 200000..200999).
4. Identify fresh samples of the enrolled classes (mated) and of 1,000 more
   never-enrolled classes (ids 300000..300999, non-mated, held out from
   calibration) and report top-1/top-5, FNIR and FPIR at that threshold,
   next to a raw-pixel nearest-class-mean baseline run on the same data.

Writes ``report.json``, ``scores.png``, the full evaluation as ``report.html`` (open it
in a browser: DET, CMC, score distributions, per-class F1, TAR@FAR, the most-confused
classes with thumbnails) + ``metrics.json``, and the model + gallery to ``out``.
"""

from __future__ import annotations

import json
import platform
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .data.glyphs import GlyphSource
from .decisions import DecisionRule
from .evaluate.baseline import NearestClassMean, pixel_summary, pixel_templates
from .evaluate.originals import Glyph, glyph_sources
from .evaluate.pipeline import evaluate_recognizer
from .evaluate.protocol import OpenSetProtocol, ProtocolSizes, run_protocol, score_encoder
from .evaluate.report import write_report
from .gallery import Gallery
from .recognizer import Recognizer
from .train import Trainer
from .train.recipes import RECIPES

_RECIPE = RECIPES["demo"]


@dataclass
class DemoConfig(ProtocolSizes):
    """Sizes of the demo; ``quick()`` is a seconds-long version for tests.

    ``augment`` (a preset name or JSON pipeline, :mod:`megaclass.data.augment`) augments
    the training batches; ``None`` trains on the plain glyphs (the README's numbers).
    ``reference`` also scores the shipped reference model (``-m reference``) on the same
    enrolled classes and queries, when this installation has it.
    """

    train_classes: int = 2000
    train_steps: int = int(_RECIPE.options["steps"])
    batch_size: int = int(_RECIPE.options["batch_size"])
    dim: int = int(_RECIPE.options["dim"])  # embedding size, as the demo recipe
    augment: str | list | None = None
    reference: bool = True

    def trainer(self, *, progress: bool = True) -> Trainer:
        """The demo recipe's Trainer (``RECIPES["demo"]``) with this config's sizes."""
        options = {**_RECIPE.options, "steps": self.train_steps, "batch_size": self.batch_size,
                   "dim": self.dim, "augment": self.augment}
        return Trainer(GlyphSource(range(self.train_classes), samples_per_class=_RECIPE.samples_per_class),
                       progress=progress, **options)

    @classmethod
    def quick(cls) -> DemoConfig:
        return cls(train_classes=100, train_steps=30, batch_size=64, enrolled=200,
                   non_mated=200, per_class=3, reference=False)


def run_demo(out: str | Path = "demo-output", config: DemoConfig | None = None, *,
             progress: bool = True, log=print) -> dict:
    """Run the demo end to end; returns the report (also written to ``out/report.json``)."""
    c = config or DemoConfig()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()

    log(f"[1/4] training on glyph classes 0..{c.train_classes - 1} ({c.train_steps} steps)")
    trainer = c.trainer(progress=progress)
    encoder = trainer.fit().encoder_
    train_s = trainer.seconds_
    encoder.save(out / "model")

    log(f"[2/4] enrolling {c.enrolled:,} unseen classes x {c.per_class} samples (no retraining)")
    gallery_dir = out / "gallery"
    shutil.rmtree(gallery_dir, ignore_errors=True)
    rec = Recognizer(encoder, Gallery.open(gallery_dir, dim=encoder.dim))
    enroll_ids = range(c.enroll_start, c.enroll_start + c.enrolled)
    t = time.perf_counter()
    protocol = c.protocol().render()
    render_s = time.perf_counter() - t
    images, _ = protocol.images["enroll"]
    pixels_enrolled = images.reshape(len(images), -1).numpy()
    log(f"      then calibrating the threshold for FPIR = {c.target_fpir:.0%} on "
        f"{c.non_mated * c.non_mated_queries:,} non-mated searches and identifying "
        f"{c.enrolled * c.queries_per_class:,} mated and {c.non_mated * c.non_mated_queries:,} "
        "non-mated queries")
    t = time.perf_counter()
    run = run_protocol(rec, protocol)
    protocol_s = time.perf_counter() - t
    cal, q_vec, nm_vec, calib_vec = run.calibration, run.queries, run.non_mated, run.calib
    model = run.metrics
    q_cls = protocol.images["mated"][1]
    q_pix, nm_pix, calib_pix = (protocol.images[k][0].reshape(len(protocol.images[k][0]), -1).numpy()
                                for k in ("mated", "non_mated", "calib"))
    nm_ids = range(c.non_mated_start, c.non_mated_start + c.non_mated)
    truth = protocol.truth
    reference = _reference_scores(protocol, log) if c.reference else None
    truth_idx = (q_cls - c.enroll_start).astype(np.int64)
    pix_templates = pixel_templates(pixels_enrolled, c.per_class)
    baseline = pixel_summary(pix_templates, q_pix, nm_pix, calib_pix, truth_idx, c.target_fpir,
                             c.extra_fpir)
    report: dict[str, Any] = {
        "config": c.__dict__,
        "machine": {"cpus": torch.get_num_threads(), "platform": platform.platform(),
                    "torch": torch.__version__},
        "model": model, "raw_pixel_baseline": baseline, "reference_model": reference,
        "calibration": {**cal.to_dict(), "decision": rec.decision.spec},
        "timing": {"train_seconds": train_s, "train_images_per_second": trainer.images_per_second_,
                   "render_seconds": render_s, "enroll_seconds": run.enroll_seconds,
                   "enroll_ms_per_class": 1000 * run.enroll_seconds / c.enrolled,
                   "search_queries_per_second": len(q_vec) / max(run.search_seconds, 1e-9),
                   "enroll_calibrate_identify_seconds": protocol_s,
                   "total_seconds": time.perf_counter() - t0},
    }
    log("[4/4] the evaluation report (DET, CMC, scores, confusions) with the raw-pixel baseline")
    t = time.perf_counter()
    fpirs = (c.target_fpir, c.extra_fpir, 0.003, 0.001)
    ev = evaluate_recognizer(rec, q_vec, truth, nm_vec, fpirs=fpirs)
    size = int(round(np.sqrt(q_pix.shape[1])))  # the rendered side
    # the same raw-pixel baseline, measured by the same evaluation, beside the model in the report
    pix_rec = NearestClassMean(pix_templates, [f"glyph-{i}" for i in enroll_ids],
                               samples=[c.per_class] * c.enrolled, threshold=baseline["threshold"])
    ev_pix = evaluate_recognizer(pix_rec, q_pix.reshape(-1, 1, size, size), truth,
                                 nm_pix.reshape(-1, 1, size, size), fpirs=fpirs)
    enrolled_sample = {f"glyph-{i}": (Glyph(i, 0, seed=1), "an enrolled sample") for i in enroll_ids}
    html = write_report(out, ev, images=q_pix.reshape(-1, 1, size, size), labels=truth,
                        baseline=ev_pix, baseline_name="raw pixels",
                        sources=glyph_sources(enroll_ids, c.queries_per_class, seed=2),
                        non_mated_sources=glyph_sources(nm_ids, c.non_mated_queries, seed=2),
                        class_sample=enrolled_sample.get,
                        title="megaclass demo: unseen glyph classes",
                        context={"trained on": f"glyph classes 0..{c.train_classes - 1}",
                                 "enrolled (never seen in training)": f"{c.enrolled:,} classes x "
                                                                      f"{c.per_class} samples",
                                 "calibrated on": f"{len(calib_vec):,} non-mated searches",
                                 "decision rule": f"{rec.decision.spec} (raw pixels: score)"})
    report["html_report"] = html.name
    report["timing"]["html_report_seconds"] = time.perf_counter() - t
    report["timing"]["total_seconds"] = time.perf_counter() - t0
    (out / "report.json").write_text(json.dumps(report, indent=2))
    _plot_scores(out / "scores.png", ev, cal.threshold, c.target_fpir, rec.decision)
    rec.close()
    log(f"HTML report (open in a browser): {html}")
    return report


def _reference_scores(protocol: OpenSetProtocol, log) -> dict | None:
    """The shipped reference model on the demo's own protocol (None when not installed)."""
    from .models import load_encoder
    from .models.pretrained import shipped_dir

    if not (shipped_dir("reference") / "model.safetensors").is_file():
        log("[3/4] (the shipped reference model is not installed: no comparison)")
        return None
    log("[3/4] the shipped reference model (-m reference) on the same classes and queries")
    t = time.perf_counter()
    metrics = score_encoder(load_encoder("reference"), protocol)
    return {**metrics, "seconds": time.perf_counter() - t}


def _plot_scores(path: Path, ev, threshold: float, target: float, rule: DecisionRule) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    mated, non_mated = ev.mated_scores[ev.mated_correct], ev.non_mated_scores
    fig, ax = plt.subplots(figsize=(7, 4))
    bins = np.linspace(min(mated.min(), non_mated.min()), max(mated.max(), non_mated.max()), 60).tolist()
    what = "statistic" if rule.cohort else "best score"
    ax.hist(mated, bins=bins, alpha=0.6, density=True, label="mated (correct rank-1)")
    ax.hist(non_mated, bins=bins, alpha=0.6, density=True, label=f"non-mated ({what})")
    ax.axvline(threshold, color="k", linestyle="--", label=f"threshold @ FPIR {target:.0%}")
    ax.set_xlabel(f"best score minus the mean of the next {rule.cohort} ({rule.spec} rule)" if rule.cohort
                  else "cosine score of the best class")
    ax.set_ylabel("density")
    ax.set_title("megaclass demo: unseen classes, open-set identification")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
