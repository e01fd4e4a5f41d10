"""Evaluate a :class:`~megaclass.recognizer.Recognizer` on labelled queries: every metric at once.

:func:`evaluate_recognizer` embeds the mated queries (their classes are enrolled) and
optional non-mated queries (their classes are not), searches the gallery once, and
computes closed-set, open-set 1:N and verification 1:1 metrics. Searches are done in
chunks and verification pairs go through the bounded-memory accumulators of
:mod:`.streaming`, so memory stays flat as queries grow.

Example
-------
>>> ev = evaluate_recognizer(rec, images, labels, non_mated=other_images)  # doctest: +SKIP
>>> ev.metrics["open_set"]["fnir_at_fpir"][0]                              # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from ..errors import ConfigError, InvalidInputError, UnknownLabelError
from .classification import accuracy_by_frequency, classification_report
from .confusion import top_confusions
from .open_set import cmc_curve, det_curve, fnir_at_fpirs, rank1_miss_rate
from .streaming import VerificationStream
from .verification import DEFAULT_FARS

DEFAULT_FPIRS = (0.1, 0.01, 0.003, 0.001)


@dataclass
class Evaluation:
    """Metrics (JSON-ready ``metrics``) plus the arrays the report plots."""

    metrics: dict
    mated_scores: np.ndarray
    mated_correct: np.ndarray
    ranks: np.ndarray
    non_mated_scores: np.ndarray | None
    f1: np.ndarray
    cmc: np.ndarray
    det: dict | None = None
    verification: VerificationStream | None = None
    confusions: list = field(default_factory=list)
    predictions: list = field(default_factory=list)  # rank-1 label of each mated query
    non_mated_predictions: list = field(default_factory=list)  # rank-1 label of each non-mated one


def _search(rec, vectors: np.ndarray, k: int, chunk: int = 4096):
    for a in range(0, len(vectors), chunk):
        yield from rec.gallery.search(vectors[a:a + chunk], k=k)


def _embed(rec, images, chunk: int = 2048, progress=None) -> np.ndarray:
    """``rec.embed`` a chunk at a time; ``progress(n)`` is told each chunk's size."""
    out = []
    for a in range(0, len(images), chunk):
        out.append(rec.embed(images[a:a + chunk]))
        if progress is not None:
            progress(len(out[-1]))
    return np.concatenate(out)


def _verification(rec, q: np.ndarray, truth: Sequence[str], nm: np.ndarray | None,
                  max_classes: int, seed: int) -> tuple[VerificationStream, dict]:
    """Genuine pairs: each query vs its class; impostor pairs: vs every other class (or a
    seeded sample of ``max_classes`` classes on larger galleries), plus non-mated vs all."""
    labels = rec.gallery.labels()
    sampled = len(labels) > max_classes
    if sampled:
        rng = np.random.default_rng(seed)
        keep = set(rng.choice(len(labels), max_classes, replace=False).tolist())
        labels = [lb for i, lb in enumerate(labels) if i in keep] + \
            sorted(set(truth) - {labels[i] for i in keep})
    blocks = [rec.gallery.templates(lb) for lb in labels]
    starts = np.cumsum([0] + [len(b) for b in blocks[:-1]])
    tmpl = np.concatenate(blocks)
    col = {lb: i for i, lb in enumerate(labels)}
    stream = VerificationStream()
    t_idx = np.array([col[t] for t in truth])
    step = max(1, 4_000_000 // len(tmpl))  # queries per block: a block holds <= 4M scores
    for a in range(0, len(q), step):
        s = np.maximum.reduceat(q[a:a + step] @ tmpl.T, starts, axis=1)
        rows = np.arange(len(s))
        gen = s[rows, t_idx[a:a + step]]
        s[rows, t_idx[a:a + step]] = np.nan
        stream.add(np.clip(gen, -1, 1), np.clip(s[~np.isnan(s)], -1, 1))
    if nm is not None:
        for a in range(0, len(nm), step):
            s = np.maximum.reduceat(nm[a:a + step] @ tmpl.T, starts, axis=1)
            stream.add((), np.clip(s.ravel(), -1, 1))
    info = {"classes_used": len(labels), "sampled": sampled,
            "note": (f"impostor pairs use a seeded sample of {max_classes:,} classes"
                     if sampled else "impostor pairs: every query vs every other enrolled class"),
            "resolution": stream.genuine.width}
    return stream, info


def _groups(rec, key: str, truth, scores, correct, nm_scores, nm_meta, fpirs, threshold) -> dict:
    """Per-group rates (see :mod:`.groups`) for mated truth labels and non-mated probe meta."""
    from ..data.glyph_attributes import glyph_class_meta
    from .groups import group_of, group_rates

    n_nm = 0 if nm_scores is None else nm_scores.size
    if nm_meta is not None and len(nm_meta) != n_nm:
        raise InvalidInputError(f"non_mated_meta has {len(nm_meta)} entries for {n_nm} non-mated searches")
    by_label = {t: group_of({**glyph_class_meta(t), **rec.gallery.class_meta(t)}, key) for t in set(truth)}
    nm_groups = [group_of(m, key) for m in nm_meta] if nm_meta is not None else ["unknown"] * n_nm
    return group_rates([by_label[t] for t in truth], scores, correct, nm_groups,
                       () if nm_scores is None else nm_scores, key=key, threshold=threshold, fpirs=fpirs)


def evaluate_recognizer(rec, images, truth: Sequence[str], non_mated=None, *,
                        ks: Sequence[int] = (1, 5, 10), fpirs: Sequence[float] = DEFAULT_FPIRS,
                        fars: Sequence[float] = DEFAULT_FARS, confusions: int = 20,
                        verification_classes: int = 20_000, seed: int = 0,
                        group_by: str | None = None,
                        non_mated_meta: Sequence[Mapping] | None = None,
                        decision: str | None = None) -> Evaluation:
    """Closed-set, open-set 1:N and verification 1:1 metrics of a recognizer.

    Parameters
    ----------
    rec : a Recognizer (encoder + gallery).
    images : mated query samples (anything ``rec.embed`` accepts) or an ``(N, dim)`` array
        of embeddings already computed (float array with ``dim`` columns).
    truth : the enrolled label of each mated query. A label not enrolled raises
        :class:`UnknownLabelError` (it would be a non-mated search, not a miss).
    non_mated : samples of classes NOT enrolled (optional): without them FPIR and FNIR at
        FPIR are reported as undefined.
    ks : top-k accuracies to report; the CMC curve goes to ``max(ks)``.
    fpirs, fars : operating points for FNIR@FPIR and TAR@FAR.
    verification_classes : cap on the classes used for impostor pairs.
    group_by : a class meta key: FNIR / FPIR per group of it, with differentials, in
        ``metrics["groups"]`` (see :func:`~megaclass.evaluate.groups.group_rates`). A mated
        search's group is its true class's meta value (``glyph-<id>`` classes also carry
        :mod:`~megaclass.data.glyph_attributes`; the gallery's meta wins); classes without
        it are ``"unknown"``.
    non_mated_meta : with ``group_by``, the attributes of each non-mated probe's own class
        (one mapping per non-mated sample; without it they are all ``"unknown"``).
    decision : the decision rule the open-set rates use (``"score"`` or ``"cohort[:N]"``,
        :class:`~megaclass.decisions.DecisionRule`); default the recognizer's. The mated and
        non-mated "scores" of the result are then that rule's statistic. Rates "at the
        gallery threshold" are reported only when the rule is the one it was calibrated for.

    Returns
    -------
    Evaluation
    """
    truth = list(truth)
    if not truth:
        raise InvalidInputError("evaluation needs at least one mated query")
    if len(rec.gallery) == 0:
        raise InvalidInputError("the gallery is empty: enroll classes before evaluating")
    if group_by is not None and (not isinstance(group_by, str) or not group_by.strip()):
        raise InvalidInputError(f"group_by must be a non-empty class meta key, got {group_by!r}")

    def vecs(x):
        a = np.asarray(x) if isinstance(x, np.ndarray) else None
        if a is not None and a.ndim == 2 and a.shape[1] == rec.gallery.dim:
            return a.astype(np.float32)
        return _embed(rec, x)

    q = vecs(images)
    if len(q) != len(truth):
        raise InvalidInputError(f"{len(q)} mated queries but {len(truth)} labels")
    unknown = sorted({t for t in truth if t not in rec.gallery})
    if unknown:
        raise UnknownLabelError(f"{len(unknown)} query labels are not enrolled in the gallery, e.g. "
                                f"{unknown[0]!r} (pass their samples as non-mated searches instead)")
    from ..decisions import DecisionRule

    own = getattr(rec, "decision", None)
    rule = DecisionRule.parse(decision) if decision is not None else (own or DecisionRule())
    if rule.cohort and own is None:
        raise ConfigError(f"decision rule {rule.spec}: this recognizer (an ensemble) decides on "
                          "its fused score only")
    kmax = max(ks)
    # one pass over the candidate lists, keeping O(1) per query (rank, rank-1 label and score)
    pred: list[str | None] = []
    scores = np.full(len(truth), -np.inf)
    ranks = np.zeros(len(truth), dtype=np.int64)
    for i, m in enumerate(_search(rec, q, max(kmax, rule.candidates))):
        pred.append(m[0].label if m else None)
        if m:
            scores[i] = rule.statistic([c.score for c in m])
        for r, c in enumerate(m[:kmax], start=1):
            if c.label == truth[i]:
                ranks[i] = r
                break
    correct = ranks == 1
    cmc = cmc_curve(ranks, kmax)
    report = classification_report(truth, pred)
    freq = {t: int(rec.gallery.class_meta(t).get("_samples", len(rec.gallery.templates(t))))
            for t in set(truth)}
    nm_vec = vecs(non_mated) if non_mated is not None and len(non_mated) else None
    nm_scores, nm_pred = None, []
    if nm_vec is not None:
        nm_found = list(_search(rec, nm_vec, rule.candidates))
        nm_scores = rule.statistics_of(nm_found)
        nm_pred = [m[0].label if m else None for m in nm_found]
    stream, vinfo = _verification(rec, q, truth, nm_vec, verification_classes, seed)
    threshold = rec.threshold if own is None or own == rule else None
    open_set = {
        "decision": rule.spec,
        "mated_searches": len(truth),
        "non_mated_searches": 0 if nm_scores is None else int(nm_scores.size),
        "rank1_miss_rate": rank1_miss_rate(ranks),
        "fnir_at_fpir": fnir_at_fpirs(scores, correct, [] if nm_scores is None else nm_scores, fpirs),
        "gallery_threshold": rec.threshold,
    }
    if nm_scores is not None and threshold is not None:
        from .open_set import fnir, fpir
        open_set["at_gallery_threshold"] = {"fpir": fpir(nm_scores, threshold),
                                            "fnir": fnir(scores, correct, threshold)}
    elif nm_scores is None:
        open_set["fpir_reason"] = "FPIR undefined: no non-mated searches were given"
    conf = top_confusions(truth, pred, n=confusions)
    metrics = {
        "gallery": {"classes": len(rec.gallery), "dim": rec.gallery.dim},
        "closed_set": {"queries": len(truth), "top_k": {f"top{k}": float(cmc[k - 1]) for k in ks},
                       "cmc": cmc.tolist(), **report.to_dict(),
                       "accuracy_by_frequency": accuracy_by_frequency(truth, pred, freq),
                       "top_confusions": conf},
        "open_set": open_set,
        "verification": {**vinfo, "genuine_pairs": stream.genuine.n,
                         "impostor_pairs": stream.impostor.n,
                         "tar_at_far": [stream.tar_at_far(f) for f in fars],
                         "eer": stream.eer() if stream.impostor.n else None},
    }
    if group_by is not None:
        metrics["groups"] = _groups(rec, group_by, truth, scores, correct, nm_scores,
                                    non_mated_meta, fpirs, threshold)
    det = det_curve(scores, correct, nm_scores) if nm_scores is not None else None
    return Evaluation(metrics=metrics, mated_scores=scores, mated_correct=correct, ranks=ranks,
                      non_mated_scores=nm_scores, f1=report.f1, cmc=cmc, det=det,
                      verification=stream, confusions=conf, predictions=pred,
                      non_mated_predictions=nm_pred)
