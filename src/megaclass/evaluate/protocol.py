"""The demo's open-set protocol on unseen glyph classes, reusable for any encoder.

Rendered once (:meth:`OpenSetProtocol.render`), the same images score every encoder
(:func:`score_encoder`): the quick demo model, the shipped reference model, the runs of a
recipe comparison. The protocol is the demo's: enroll ``enrolled`` classes never seen in
training (``per_class`` drawings each), calibrate the threshold on non-mated searches of
other never-enrolled classes, then identify one fresh drawing per enrolled class (mated)
and fresh drawings of a third set of never-enrolled classes (non-mated, held out from
calibration); ``*_cohort`` are the same rates under the cohort decision rule
(:class:`~megaclass.decisions.DecisionRule`, ``cohort:20``). Search is exact (the real
:class:`~megaclass.gallery.Gallery` with a flat index), so the numbers measure the model alone.

Example
-------
>>> from megaclass.models import Encoder, EncoderConfig
>>> p = OpenSetProtocol.render(OpenSetProtocol(enrolled=20, per_class=2, non_mated=20))
>>> r = score_encoder(Encoder(EncoderConfig(dim=16, widths=(8, 16))), p)
>>> sorted(r)  # doctest: +NORMALIZE_WHITESPACE
['fnir', 'fnir_at_extra_fpir', 'fnir_at_extra_fpir_cohort', 'fnir_cohort', 'fpir',
 'fpir_cohort', 'threshold', 'top1', 'top5']
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass, field, fields

import numpy as np
import torch

from ..data.glyphs import GlyphSource
from ..decisions import DecisionRule
from .closed_set import top_k_accuracy
from .open_set import DEFAULT_TARGET_FPIR, Calibration, calibrate_threshold, fnir, fpir


@dataclass
class ProtocolSizes:
    """Sizes and class-id ranges of the protocol (shared with the demo's configuration)."""

    enrolled: int = 5000
    per_class: int = 5
    non_mated: int = 1000
    queries_per_class: int = 1
    non_mated_queries: int = 2
    target_fpir: float = DEFAULT_TARGET_FPIR
    extra_fpir: float = 0.1
    enroll_start: int = 100_000
    calib_start: int = 200_000
    non_mated_start: int = 300_000

    def protocol(self) -> OpenSetProtocol:
        """The protocol of these sizes (not rendered yet)."""
        return OpenSetProtocol(**{f.name: getattr(self, f.name) for f in fields(ProtocolSizes)})


@dataclass
class OpenSetProtocol(ProtocolSizes):
    """The protocol's sizes; :meth:`render` draws its images (kept in ``images``)."""

    images: dict = field(default_factory=dict, repr=False)

    @property
    def enroll_ids(self) -> range:
        return range(self.enroll_start, self.enroll_start + self.enrolled)

    def render(self) -> OpenSetProtocol:
        """Draw every image of the protocol (seeded: the same images every time)."""
        def batch(start: int, n: int, per: int, seed: int):
            return GlyphSource.batch(np.arange(start, start + n), per, seed=seed)

        self.images = {
            "enroll": batch(self.enroll_start, self.enrolled, self.per_class, 1),
            "calib": batch(self.calib_start, self.non_mated, self.non_mated_queries, 2),
            "mated": batch(self.enroll_start, self.enrolled, self.queries_per_class, 2),
            "non_mated": batch(self.non_mated_start, self.non_mated, self.non_mated_queries, 2),
        }
        return self

    @property
    def truth(self) -> list[str]:
        return [f"glyph-{i}" for i in self.images["mated"][1]]


def score_encoder(encoder, protocol: OpenSetProtocol) -> dict:
    """Top-1/top-5, FNIR at the calibrated FPIR (and at ``extra_fpir``) and the measured
    FPIR of ``encoder`` on the protocol, searched exactly in a temporary gallery."""
    from ..gallery import Gallery
    from ..recognizer import Recognizer

    with tempfile.TemporaryDirectory(prefix="megaclass-protocol-") as tmp:
        rec = Recognizer(encoder, Gallery.open(tmp, dim=encoder.dim, index="Flat"))
        try:
            return run_protocol(rec, protocol).metrics
        finally:
            rec.close()


@dataclass
class ProtocolRun:
    """What :func:`run_protocol` measured, with the embeddings behind it (for reports)."""

    metrics: dict
    calibration: Calibration
    queries: np.ndarray
    non_mated: np.ndarray
    calib: np.ndarray
    enroll_seconds: float = 0.0
    search_seconds: float = 0.0


def run_protocol(rec, protocol: OpenSetProtocol) -> ProtocolRun:
    """Enroll, calibrate and identify with ``rec`` (its gallery empty) on the protocol."""
    p = protocol if protocol.images else protocol.render()
    images, _ = p.images["enroll"]
    per = p.per_class
    t = time.perf_counter()
    rec.enroll_many((f"glyph-{cid}", images[k * per:(k + 1) * per]) for k, cid in enumerate(p.enroll_ids))
    enroll_s = time.perf_counter() - t
    with torch.inference_mode():
        calib = rec.embed(p.images["calib"][0])
        queries = rec.embed(p.images["mated"][0])
        non_mated = rec.embed(p.images["non_mated"][0])
    # one search per set, deep enough for top-5 and for the cohort rule; both decision rules
    # are scored on the same searches, each with thresholds fitted on the calibration searches
    rules = {"": DecisionRule.parse("score"), "_cohort": DecisionRule.parse("cohort")}
    k = max(5, *(r.candidates for r in rules.values()))
    found_cal = rec.gallery.search(calib, k=k)
    # the quick miniature has fewer non-mated searches than 10/FPIR: its threshold is rough
    cal = rec.calibrate_vectors(calib, p.target_fpir, allow_few=True, found=found_cal)
    t = time.perf_counter()
    found_m = rec.gallery.search(queries, k=k)
    search_s = time.perf_counter() - t
    found_nm = rec.gallery.search(non_mated, k=k)
    truth = p.truth
    metrics = top_k_accuracy([[m.label for m in ms[:5]] for ms in found_m], truth, ks=(1, 5))
    m_correct = np.array([bool(ms) and ms[0].label == t for ms, t in zip(found_m, truth, strict=True)])
    for suffix, rule in rules.items():
        s_cal, s_m, s_nm = (rule.statistics_of(f) for f in (found_cal, found_m, found_nm))
        thr, extra = (calibrate_threshold(s_cal, f).threshold for f in (p.target_fpir, p.extra_fpir))
        if not suffix:
            metrics["threshold"] = thr  # the score rule's (the recognizer keeps its own rule's)
        metrics.update({f"fpir{suffix}": fpir(s_nm, thr), f"fnir{suffix}": fnir(s_m, m_correct, thr),
                        f"fnir_at_extra_fpir{suffix}": fnir(s_m, m_correct, extra)})
    return ProtocolRun(metrics, cal, queries, non_mated, calib, enroll_s, search_s)


def score_pixels(protocol: OpenSetProtocol) -> dict:
    """The raw-pixel baseline on the protocol (nearest normalised class mean of pixels),
    with the same metrics as :func:`score_encoder`."""
    from .baseline import pixel_summary, pixel_templates

    p = protocol if protocol.images else protocol.render()

    def flat(key: str) -> np.ndarray:
        x = p.images[key][0]
        return x.reshape(len(x), -1).numpy()

    templates = pixel_templates(flat("enroll"), p.per_class)
    truth = (p.images["mated"][1] - p.enroll_start).astype(np.int64)
    r = pixel_summary(templates, flat("mated"), flat("non_mated"), flat("calib"), truth,
                      p.target_fpir, p.extra_fpir)
    return {k: r[k] for k in ("top1", "top5", "threshold", "fpir", "fnir", "fnir_at_extra_fpir")}
