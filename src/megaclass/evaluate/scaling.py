"""Gallery-size scaling: how accuracy and FNIR@FPIR degrade as distractor classes are enrolled.

MegaFace (Kemelmacher-Shlizerman et al., 2016) showed that rank-1 identification drops
steadily as distractors are added to the gallery (from 10 to 1M); NIST FRTE 1:N reports
FNIR at FPIR = 0.003 on galleries of up to 12M people. :func:`gallery_size_curve` runs
that experiment with real components: it copies the mated classes of a recognizer's
gallery into a scratch :class:`~megaclass.gallery.Gallery`, enrolls distractor classes
in chunks (the built-in glyph source gives an unlimited supply), and after each step
measures rank-1 accuracy of the mated queries and FNIR at a target FPIR with the
non-mated queries, calibrating the threshold again at every size (the threshold must
rise with the gallery: more classes, higher non-mated best scores).

Example
-------
>>> curve = gallery_size_curve(rec, q, truth, nm, glyph_distractors(1_000_000),
...                            sizes=(1000, 10_000))                      # doctest: +SKIP
>>> [(p["gallery_size"], round(p["top1"], 3)) for p in curve["points"]]   # doctest: +SKIP
"""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import numpy as np

from ..errors import InvalidInputError
from .open_set import DEFAULT_TARGET_FPIR, fnir_at_fpirs

Distractors = Callable[[int, int], Iterable[tuple[str, object]]]
MAX_CONFUSIONS = 24


def _confusions(pred: np.ndarray, score: np.ndarray, truth: np.ndarray, mated: set) -> list[dict]:
    """The wrong rank-1 answers, highest score first (see :func:`gallery_size_curve`)."""
    wrong = np.flatnonzero(pred != truth)
    wrong = wrong[np.argsort(-score[wrong], kind="stable")][:MAX_CONFUSIONS]
    return [{"query": int(i), "true": str(truth[i]), "predicted": None if pred[i] is None else str(pred[i]),
             "score": float(score[i]), "distractor": pred[i] is not None and pred[i] not in mated}
            for i in wrong]


def glyph_distractors(first_id: int = 10_000_000, per_class: int = 3, seed: int = 1,
                      size: int = 32) -> Distractors:
    """Distractor classes from the glyph source: ``f(offset, count)`` yields ``(label, images)``.

    Class ids ``first_id + offset ...``; keep them apart from the mated, non-mated and
    training ranges.
    """
    from ..data.glyphs import GlyphSource

    def make(offset: int, count: int):
        start = first_id + offset
        return GlyphSource(range(start, start + count), samples_per_class=per_class, seed=seed,
                           size=size).iter_classes(chunk=count)

    return make


def gallery_size_curve(rec, queries: np.ndarray, truth: Sequence[str], non_mated: np.ndarray | None,
                       distractors: Distractors, sizes: Sequence[int] = (1000, 2000, 5000, 10_000),
                       target_fpir: float = DEFAULT_TARGET_FPIR, chunk: int = 2000, workdir=None,
                       index: str | None = None, log=None,
                       decisions: Sequence[str] = ("score", "cohort")) -> dict:
    """Rank-1 accuracy and FNIR@FPIR at each gallery size (mated classes + distractors).

    Parameters
    ----------
    rec : a Recognizer whose gallery holds the mated classes (left unchanged).
    queries : ``(N, dim)`` embeddings of mated queries; ``truth`` their labels.
    non_mated : ``(M, dim)`` embeddings of non-mated queries, or None (FNIR then undefined).
    distractors : ``f(offset, count) -> [(label, samples), ...]`` (see :func:`glyph_distractors`).
    sizes : total numbers of enrolled classes to measure at; sizes smaller than the
        mated gallery are reported with a reason and no values.
    workdir : where the scratch gallery goes (a temporary directory, removed, by default).
    index : FAISS index spec of the scratch gallery (default: the gallery default, "auto",
        exact up to 200k templates, then IVF tuned for recall@1 >= 0.99).
    decisions : decision rules (:class:`~megaclass.decisions.DecisionRule`) to report FNIR
        for at each size, in ``fnir_by_decision``; ``fnir`` and ``threshold`` are the first's.

    Returns
    -------
    dict with ``points`` (``gallery_size``, ``top1``, ``fnir``, ``threshold``,
    ``enroll_seconds``, ``search_seconds``, ``reason``), ``target_fpir``, ``mated_classes`` and
    ``confusions``: at the largest size, the mated queries ranked to a wrong class first
    (highest-scoring first, at most ``MAX_CONFUSIONS``), each with ``query`` (its index),
    ``true``, ``predicted``, ``score`` and ``distractor`` (whether the wrong class is one
    of the added distractors), so the report can show them as image pairs.
    """
    from ..decisions import DecisionRule, score_matrix
    from ..gallery import Gallery
    from ..recognizer import Recognizer

    rules = [DecisionRule.parse(d) for d in decisions] or [DecisionRule()]
    depth = max(r.candidates for r in rules)
    truth = list(truth)
    if len(truth) == 0 or len(queries) != len(truth):
        raise InvalidInputError(f"need one label per mated query, got {len(queries)} and {len(truth)}")
    labels = rec.gallery.labels()
    own = workdir is None
    root = Path(tempfile.mkdtemp(prefix="megaclass-scaling-")) if own else Path(workdir)
    gallery = Gallery.open(root / "gallery", dim=rec.gallery.dim, index=index)
    if len(gallery):
        raise InvalidInputError(f"scratch gallery {root / 'gallery'} is not empty")
    try:
        gallery.enroll_many([(lb, rec.gallery.templates(lb), rec.gallery.class_meta(lb))
                             for lb in labels])
        scratch = Recognizer(rec.encoder, gallery, templates=rec.templates, allow_model_mismatch=True)
        truth_arr = np.array(truth, dtype=object)
        points: list[dict] = []
        added, confusions = 0, []
        n_nm = 0 if non_mated is None else len(non_mated)
        for size in sorted(set(int(s) for s in sizes)):
            if size < len(labels):
                points.append({"gallery_size": size, "top1": None, "fnir": None, "threshold": None,
                               "reason": f"smaller than the {len(labels):,} mated classes"})
                continue
            t = time.perf_counter()
            while len(labels) + added < size:
                n = min(chunk, size - len(labels) - added)
                scratch.enroll_many(distractors(added, n))
                added += n
                if log and added % 100_000 < n:
                    log(f"  enrolled {len(labels) + added:,} / {size:,} classes "
                        f"({time.perf_counter() - t:.0f} s)")
            enroll_s = time.perf_counter() - t
            t = time.perf_counter()
            best = scratch.gallery.search(queries, k=depth)
            search_s = time.perf_counter() - t
            pred = np.array([m[0].label if m else None for m in best], dtype=object)
            score = np.array([m[0].score if m else -np.inf for m in best])
            lists = score_matrix(best, depth)
            ok = pred == truth_arr
            mated = set(labels)
            confusions = _confusions(pred, score, truth_arr, mated)
            to_distractor = sum(1 for p in pred[~ok] if p is not None and p not in mated)
            nm_lists = (np.zeros((0, depth)) if non_mated is None
                        else score_matrix(scratch.gallery.search(non_mated, k=depth), depth))
            by_rule = {rule.spec: fnir_at_fpirs(rule.statistics(lists), ok, rule.statistics(nm_lists),
                                                (target_fpir,))[0] for rule in rules}
            r = by_rule[rules[0].spec]
            points.append({"gallery_size": len(scratch.gallery), "top1": float(ok.mean()),
                           "fnir": r["fnir"], "threshold": r["threshold"], "reason": r["reason"],
                           "decision": rules[0].spec,
                           "fnir_by_decision": {k: v["fnir"] for k, v in by_rule.items()},
                           "enroll_seconds": enroll_s, "search_seconds": search_s,
                           "wrong": int((~ok).sum()), "wrong_to_distractors": to_distractor})
            if log:
                rates = "  ".join(f"{k} {v['fnir'] if v['fnir'] is None else round(v['fnir'], 3)}"
                                  for k, v in by_rule.items())
                log(f"  gallery {len(scratch.gallery):>9,}: top-1 {ok.mean():.3f}  "
                    f"FNIR@FPIR {target_fpir:g}: {rates}")
        return {"points": points, "target_fpir": target_fpir, "mated_classes": len(labels),
                "index": gallery.stats()["index"], "confusions": confusions if points else [],
                "mated_queries": len(truth), "non_mated_queries": n_nm}
    finally:
        gallery.close()
        if own:
            shutil.rmtree(root, ignore_errors=True)
