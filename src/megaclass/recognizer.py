"""The :class:`Recognizer`: encoder + gallery + threshold, on raw samples.

This is what most users touch: enroll a class from a few samples (no
retraining), identify samples among everything enrolled (1:N, with "unknown"
when the best score is below the threshold), verify a claimed identity (1:1),
erase a class, and calibrate the threshold for a target false-positive
identification rate from non-mated samples.

Example
-------
>>> from megaclass import GlyphSource, Recognizer, train_encoder
>>> enc = train_encoder(GlyphSource(40, samples_per_class=8), steps=2, batch_size=32,
...                     progress=False)
>>> import tempfile
>>> rec = Recognizer(enc, gallery=tempfile.mkdtemp())
>>> rec.enroll("seven", GlyphSource.samples(7, n=5))
5
>>> rec.identify(GlyphSource.samples(7, n=1, seed=1), threshold=None)[0].candidates[0].label
'seven'
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from .data.images import to_batch
from .decisions import UNSET, Decision, DecisionRule, Verdict, _Unset, resolve_threshold
from .errors import ConfigError, DimensionMismatchError, InvalidInputError, UnknownLabelError
from .evaluate.open_set import DEFAULT_TARGET_FPIR, Calibration, calibrate_threshold, too_few_non_mated
from .gallery import GalleryProtocol
from .models import Encoder, load_encoder

if TYPE_CHECKING:
    from .models import OnnxEncoder

THRESHOLD_KEY = "threshold"
DECISION_KEY = "decision"  # the rule the stored threshold applies to (absent: "score")
CALIBRATION_KEY = "calibration"
MODEL_KEY = "model_fingerprint"
MODE_KEY = "template_mode"
SAMPLES_META = "_samples"  # class meta kept by "mean" mode: number of samples averaged
SUM_NORM_META = "_sum_norm"  # ... and the norm of their embedding sum (for exact updates)
INTERNAL_META = (SAMPLES_META, SUM_NORM_META)  # never shown to users (public_meta drops them)
__all__ = ["Recognizer", "Decision", "Verdict", "UNSET", "class_templates", "public_meta"]


def public_meta(meta: dict) -> dict:
    """A class's meta without the keys the recognizer keeps for itself (``_samples``, ...)."""
    return {k: v for k, v in meta.items() if k not in INTERNAL_META}


def class_templates(vectors: np.ndarray, mode: str, meta: dict | None,
                    previous_sum: np.ndarray | None = None, count: int = 0) -> tuple[np.ndarray, dict]:
    """Templates and class meta to store for a class's sample embeddings ``vectors``:
    ``mode`` "each" keeps them all; "mean" one unit mean (plus ``previous_sum`` of ``count``
    earlier samples), with the sample count and sum norm in the meta for exact updates."""
    meta = dict(meta or {})
    if mode == "each":
        return vectors, meta
    total = vectors.astype(np.float64).sum(axis=0)
    if previous_sum is not None:
        total = total + previous_sum
    norm = float(np.linalg.norm(total))
    if not np.isfinite(norm) or norm < 1e-12:
        raise InvalidInputError("the samples' embeddings cancel out: cannot form a template")
    meta[SAMPLES_META] = count + len(vectors)
    meta[SUM_NORM_META] = norm
    return (total / norm).astype(np.float32)[None, :], meta


class Recognizer:
    """Identify, verify, enroll and erase classes with an encoder and a gallery.

    Parameters
    ----------
    encoder : an :class:`Encoder`, an imported ONNX encoder, or the path of a model directory
        of either kind. A *list* of them gives an ensemble instead
        (``Recognizer([enc_a, enc_b], gallery="g/")`` returns a
        :class:`~megaclass.fusion.FusedRecognizer`, see :meth:`__new__`).
    gallery : any gallery (:class:`~megaclass.gallery.GalleryProtocol`: the local
        :class:`Gallery`, or another backend), or a directory path for a local
        :class:`Gallery` (created when missing).
    threshold : accept threshold on the decision rule's statistic (the cosine score under the
        default rule ``score``); defaults to the gallery's calibrated threshold. On a gallery
        never calibrated, identify and verify refuse (NotCalibratedError) unless a threshold
        is given here or to the call, or the call asks for candidates only (``threshold=None``).
    templates : ``"mean"`` (default) keeps one template per class, the L2-normalised
        mean of its samples' embeddings (weight imprinting, Qi et al. 2018); ``"each"``
        keeps one template per sample and scores a class by its best template. On
        the built-in glyphs, "mean" gave FNIR@FPIR=1 % of 0.66 vs 0.79 for "each"
        (2,000 enrolled classes, 5 samples each). Stored in the gallery on first use.
    key : encryption key (32 bytes or a key-file path) when ``gallery`` is a path;
        default ``$MEGACLASS_GALLERY_KEY`` / ``$MEGACLASS_GALLERY_KEY_FILE``.
    allow_model_mismatch : accept a gallery enrolled with a different model of
        the same dimension (its templates will not be comparable).
    decision : the decision rule, ``"score"`` or ``"cohort[:N]"``
        (:class:`~megaclass.decisions.DecisionRule`); defaults to the one the gallery was
        calibrated with (``score`` if none).
    """

    gallery: GalleryProtocol

    def __new__(cls, encoder=None, *args, **kwargs):
        """A list of encoders (or model paths) gives an ensemble: a
        :class:`~megaclass.fusion.FusedRecognizer` with one gallery per model under the one
        folder ``gallery`` (``gallery/model-0``, ``gallery/model-1``, ...; layout and checks in
        :func:`megaclass.fusion_gallery.open_ensemble`, which takes the fusion options
        ``rule=`` and ``weights=`` too). Anything else gives a Recognizer."""
        if cls is Recognizer and isinstance(encoder, list | tuple):
            from .fusion_gallery import open_ensemble

            return open_ensemble(encoder, *args, **kwargs)
        return super().__new__(cls)

    def __init__(self, encoder: Encoder | OnnxEncoder | str | os.PathLike,
                 gallery: GalleryProtocol | str | os.PathLike,
                 *, threshold: float | None = None, templates: str | None = None,
                 key=None, allow_model_mismatch: bool = False, decision: str | None = None) -> None:
        self.encoder = load_encoder(encoder) if isinstance(encoder, str | os.PathLike) else encoder
        self.encoder.eval()
        if not isinstance(gallery, str | os.PathLike):
            if not isinstance(gallery, GalleryProtocol):
                raise ConfigError(f"gallery must be a gallery (GalleryProtocol) or a directory path, "
                                  f"got {type(gallery).__name__}")
            self.gallery = gallery
        else:
            from .fusion_gallery import single_model_refusal

            refusal = single_model_refusal(gallery)
            if refusal:
                raise ConfigError(refusal)
            try:
                from .gallery.open import open_gallery

                self.gallery = open_gallery(gallery if isinstance(gallery, str) else Path(gallery),
                                            dim=self.encoder.dim, key=key)
            except DimensionMismatchError as exc:
                raise DimensionMismatchError(
                    f"model makes {self.encoder.dim}-d embeddings, which gallery {gallery} "
                    f"cannot hold ({exc})"
                ) from None
        if self.gallery.dim != self.encoder.dim:
            raise DimensionMismatchError(
                f"model makes {self.encoder.dim}-d embeddings but gallery {self.gallery.path} "
                f"holds {self.gallery.dim}-d templates"
            )
        self.fingerprint = self.encoder.fingerprint()
        self._search_model = None if allow_model_mismatch else self.fingerprint
        stored = self.gallery.get_setting(MODEL_KEY)
        if stored and stored != self.fingerprint and len(self.gallery) and not allow_model_mismatch:
            raise ConfigError(
                f"gallery {self.gallery.path} was enrolled with model {stored}, this model is "
                f"{self.fingerprint}: its templates are not comparable (re-enroll, or pass "
                "allow_model_mismatch=True)"
            )
        self._threshold = threshold
        self._decision = None if decision is None else DecisionRule.parse(decision)
        stored_mode = self.gallery.get_setting(MODE_KEY)
        mode = templates or stored_mode or "mean"
        if mode not in ("mean", "each"):
            raise ConfigError(f"templates must be 'mean' or 'each', got {mode!r}")
        if stored_mode and mode != stored_mode and len(self.gallery):
            raise ConfigError(f"gallery {self.gallery.path} keeps templates={stored_mode!r}, "
                              f"not {mode!r}")
        self.templates = mode

    # -- configuration ---------------------------------------------------------------
    @property
    def threshold(self) -> float | None:
        """Explicit threshold, else the gallery's calibrated one, else None (not calibrated)."""
        if self._threshold is not None:
            return self._threshold
        value = self.gallery.get_setting(THRESHOLD_KEY)
        return None if value is None else float(value)

    @threshold.setter
    def threshold(self, value: float | None) -> None:
        self._threshold = value

    @property
    def decision(self) -> DecisionRule:
        """The decision rule (:class:`~megaclass.decisions.DecisionRule`): the one given to the
        constructor, else the one the gallery was calibrated with, else ``score``."""
        if self._decision is not None:
            return self._decision
        return DecisionRule.parse(self.gallery.get_setting(DECISION_KEY))

    # -- embedding -------------------------------------------------------------------
    def embed(self, samples) -> np.ndarray:
        """Samples (tensor, array, image paths, PIL images) -> ``(N, dim)`` float32 embeddings."""
        batch = to_batch(samples, spec=self.encoder.input_spec)
        with torch.inference_mode():
            return self.encoder.embed(batch).numpy()

    # -- gallery operations ----------------------------------------------------------
    def enroll(self, label: str, samples, meta: dict | None = None, *, replace: bool = False) -> int:
        """Enroll a new class from its samples; returns the number of samples used."""
        vectors = self.embed(samples)
        self._mark_model()
        self.gallery.enroll(label, *self._templates(vectors, meta), replace=replace)
        return len(vectors)

    def enroll_many(self, items: Iterable[tuple], *, replace: bool = False,
                    progress=None, chunk_images: int = 4096) -> int:
        """Enroll several ``(label, samples[, meta])`` classes in one transaction (all or
        nothing), as :meth:`Gallery.enroll_many` takes ``(label, vectors[, meta])``.

        Samples are converted and embedded about ``chunk_images`` images at a time, so
        memory stays bounded whatever the number of classes (only the embeddings are kept);
        nothing is written before every class is embedded, so a bad sample changes nothing.
        ``progress(n)``, when given, is called with the number of classes each chunk embedded.
        Returns the number of samples used.
        """
        labels: list[str] = []
        metas: list[dict | None] = []
        per_class: list[np.ndarray] = []
        pending: list[torch.Tensor] = []

        def embed_pending() -> None:
            if not pending:
                return
            vectors = self.embed(torch.cat(pending))  # one batched forward pass per chunk
            bounds = np.cumsum([0] + [len(b) for b in pending])
            per_class.extend(vectors[a:b] for a, b in zip(bounds[:-1], bounds[1:], strict=True))
            if progress is not None:
                progress(len(pending))
            pending.clear()

        waiting = 0  # images in pending
        for item in items:
            if not isinstance(item, tuple | list) or len(item) not in (2, 3):
                raise InvalidInputError(f"item {len(labels)}: expected (label, samples[, meta])")
            labels.append(item[0])
            metas.append(item[2] if len(item) == 3 else None)
            pending.append(to_batch(item[1], spec=self.encoder.input_spec))
            waiting += len(pending[-1])
            if waiting >= chunk_images:
                embed_pending()
                waiting = 0
        embed_pending()
        if not labels:
            return 0
        prepared = [(label, *self._templates(v, meta))
                    for label, v, meta in zip(labels, per_class, metas, strict=True)]
        self._mark_model()
        self.gallery.enroll_many(prepared, replace=replace)
        return sum(len(v) for v in per_class)

    def add_samples(self, label: str, samples) -> int:
        """Add samples to an enrolled class (updating its mean template in "mean" mode)."""
        if label not in self.gallery:
            raise UnknownLabelError(f"cannot add samples to {label!r}: it is not enrolled")
        vectors = self.embed(samples)
        if self.templates == "each":
            return self.gallery.add_templates(label, vectors)
        meta = self.gallery.class_meta(label)
        old = self.gallery.templates(label)
        if SAMPLES_META in meta and len(old) == 1:
            previous_sum = old[0] * meta[SUM_NORM_META]
            count = meta[SAMPLES_META]
        else:  # enrolled in "each" mode or by another tool: average what is there
            previous_sum, count = old.sum(axis=0), len(old)
        template, new_meta = self._templates(vectors, meta, previous_sum, count)
        self.gallery.enroll(label, template, new_meta, replace=True)
        return len(vectors)

    def _templates(self, vectors: np.ndarray, meta: dict | None,
                   previous_sum: np.ndarray | None = None, count: int = 0):
        """Templates and class meta to store for these sample embeddings."""
        return class_templates(vectors, self.templates, meta, previous_sum, count)

    def erase(self, label: str) -> int:
        """Remove a class and all its templates; returns the number of templates removed."""
        return self.gallery.erase(label)

    def _mark_model(self) -> None:
        if self.gallery.get_setting(MODEL_KEY) != self.fingerprint:
            self.gallery.set_setting(MODEL_KEY, self.fingerprint)
        if self.gallery.get_setting(MODE_KEY) != self.templates:
            self.gallery.set_setting(MODE_KEY, self.templates)

    # -- recognition -----------------------------------------------------------------
    @property
    def calibrated(self) -> bool:
        """Whether a threshold is set (calibrated in the gallery, or given to the constructor)."""
        return self.threshold is not None

    def decision_threshold(self, threshold: float | None | _Unset = UNSET) -> float | None:
        """The threshold a decision uses: ``threshold`` when given (None: candidates only,
        no rejection), else :attr:`threshold`; NotCalibratedError when there is none, so
        that an uncalibrated gallery never silently accepts every probe
        (:func:`~megaclass.decisions.resolve_threshold`)."""
        return resolve_threshold(threshold, calibrated=self.threshold, where=self.gallery.path)

    def identify(self, samples, k: int = 5, *, where: dict | None = None,
                 threshold=UNSET) -> list[Decision]:
        """1:N: the best class of each sample, or None (unknown) below the threshold.

        ``where`` restricts the search to classes whose meta matches (see Gallery.search).
        ``threshold`` overrides the recognizer's; ``threshold=None`` asks for candidates
        only (no rejection: the best candidate is the label). Without either, an
        uncalibrated gallery raises NotCalibratedError.
        """
        thr = self.decision_threshold(threshold)  # before the (costly) embedding
        return self.identify_vectors(self.embed(samples), k=k, where=where, threshold=thr)

    def identify_vectors(self, vectors: np.ndarray, k: int = 5, *,
                         where: dict | None = None, threshold=UNSET) -> list[Decision]:
        """:meth:`identify` on embeddings that were already computed."""
        threshold = self.decision_threshold(threshold)
        rule = self.decision
        out = []
        for matches in self.gallery.search(vectors, k=max(k, rule.candidates), where=where,
                                           model=self._search_model):
            if not matches:
                out.append(Decision(None, float("-inf"), []))
                continue
            best = matches[0]
            stat = rule.statistic([m.score for m in matches])
            accepted = threshold is None or stat >= threshold
            out.append(Decision(best.label if accepted else None, best.score, matches[:k],
                                stat if rule.cohort else None))
        return out

    def verify(self, sample, label: str, *, threshold=UNSET) -> Verdict:
        """1:1: does ``sample`` belong to ``label``? Scores by the class's best template.

        ``threshold`` as in :meth:`identify` (None: score only, always accepted).
        """
        threshold = self.decision_threshold(threshold)
        if label not in self.gallery:
            raise UnknownLabelError(f"cannot verify against {label!r}: it is not enrolled")
        vector = self.embed(sample)
        if len(vector) != 1:
            vector = vector[:1]
        score = float(np.max(self.gallery.templates(label) @ vector[0]))
        rule = self.decision
        if not rule.cohort:
            return Verdict(label, threshold is None or score >= threshold, score, threshold)
        # the claimed class against the probe's nearest *other* classes
        found = self.gallery.search(vector, k=rule.candidates + 1, model=self._search_model)[0]
        stat = rule.statistic([score] + [m.score for m in found if m.label != label])
        return Verdict(label, threshold is None or stat >= threshold, score, threshold, stat)

    def calibrate(self, non_mated_samples, target_fpir: float = DEFAULT_TARGET_FPIR, *,
                  save: bool = True, allow_few: bool = False,
                  decision: str | None = None) -> Calibration:
        """Set the threshold so that FPIR on these non-mated samples is <= ``target_fpir``
        (default ``DEFAULT_TARGET_FPIR``, 1 %: :mod:`megaclass.evaluate.open_set`).

        The samples must come from classes that are *not* enrolled. With
        ``save=True`` the threshold is stored in the gallery, so every later
        Recognizer on it uses it.

        It needs at least ``10 / target_fpir`` non-mated samples (1,000 for 1 %): with
        fewer it raises InvalidInputError saying how many and the achieved FPIR's 95 %
        confidence interval; ``allow_few=True`` turns that into a warning.

        ``decision`` (``"score"`` or ``"cohort[:N]"``, :class:`~megaclass.decisions.DecisionRule`)
        is the rule the threshold is fitted for. By default: the one given to the constructor
        or chosen at an earlier calibration of this gallery, else one picked by the gallery's
        size (``cohort:20`` from 1,000 classes on, where it lowers FNIR; ``score`` below). With
        ``save=True`` it is stored beside the threshold.
        """
        if decision is not None:
            DecisionRule.parse(decision)  # a bad rule fails before embedding
        vectors = self.embed(non_mated_samples)
        return self.calibrate_vectors(vectors, target_fpir, save=save, allow_few=allow_few,
                                      decision=decision)

    def calibrate_vectors(self, vectors: np.ndarray, target_fpir: float = DEFAULT_TARGET_FPIR, *,
                          save: bool = True, allow_few: bool = False,
                          decision: str | DecisionRule | None = None,
                          found: list | None = None) -> Calibration:
        """:meth:`calibrate` on embeddings that were already computed. ``found``: the
        gallery's search results for ``vectors`` if the caller has them (e.g. from a search
        deep enough for top-5 and the cohort rule); used when each row holds the rule's
        candidates (or every class), else the vectors are searched again."""
        if len(self.gallery) == 0:
            raise ConfigError("calibration needs an enrolled gallery: enroll classes first")
        rule, chosen = self._calibration_rule(decision)
        if rule.cohort and len(self.gallery) <= rule.cohort:
            raise ConfigError(f"decision rule {rule.spec} needs more than {rule.cohort} enrolled "
                              f"classes, the gallery has {len(self.gallery)}: use 'score' or a "
                              "smaller cohort")
        deep = min(rule.candidates, len(self.gallery))
        if found is None or len(found) != len(vectors) or any(len(ms) < deep for ms in found):
            found = self.gallery.search(vectors, k=rule.candidates, model=self._search_model)
        cal = calibrate_threshold(rule.statistics_of([ms for ms in found if ms]), target_fpir)
        few = too_few_non_mated(cal)
        if few and not allow_few:
            raise InvalidInputError(few + " (or pass allow_few=True)")
        if few:
            warnings.warn(few, stacklevel=2)
        self._threshold = None if save else cal.threshold
        self._decision = None if save else rule
        if save:
            self.gallery.set_setting(THRESHOLD_KEY, cal.threshold)
            self.gallery.set_setting(DECISION_KEY, rule.spec)
            self.gallery.set_setting(CALIBRATION_KEY, {**cal.to_dict(), "model": self.fingerprint,
                                                       "decision": rule.spec,
                                                       "decision_chosen": chosen})
        return cal

    def _calibration_rule(self, decision) -> tuple[DecisionRule, bool]:
        """The rule a calibration fits its threshold for, and whether it was chosen (given to
        this call, to the constructor or to an earlier calibration) rather than picked by the
        gallery's size (:meth:`DecisionRule.auto <megaclass.decisions.DecisionRule.auto>`)."""
        if decision is not None:
            return DecisionRule.parse(decision), True
        if self._decision is not None:
            return self._decision, True
        before = self.gallery.get_setting(CALIBRATION_KEY) or {}
        if before.get("decision_chosen"):
            return DecisionRule.parse(before["decision"]), True
        return DecisionRule.auto(len(self.gallery)), False

    # -- lifecycle -------------------------------------------------------------------
    def close(self) -> None:
        self.gallery.close()

    def __enter__(self) -> Recognizer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __len__(self) -> int:
        return len(self.gallery)
