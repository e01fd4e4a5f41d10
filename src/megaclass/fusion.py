"""Ensembles of encoders with score-level fusion: :class:`FusedRecognizer`.

Each member is a :class:`~megaclass.recognizer.Recognizer` — its own encoder and its own
gallery, so members may have different embedding dimensions. A class is enrolled in every
member's gallery (one gallery per model, chosen over one shared gallery because a gallery
has one dimension and one model fingerprint, which its search checks); the ensemble's
state — member fingerprints, score normalisation, fused threshold — is stored as the
setting ``ensemble`` in every member gallery, so a gallery opened with another set of
models is refused with the reason.

Identify: every member returns its best ``k * 2`` classes; for the union of those classes
every member's exact score (best template) is computed, normalised and fused:

- ``"zsum"`` (default): sum of z-scores ``(s - mu_m) / sigma_m``, with ``mu_m, sigma_m`` the
  mean and standard deviation of member m's top-1 scores on the non-mated calibration
  searches (score normalisation on impostor statistics: Jain, Nandakumar & Ross,
  "Score normalization in multimodal biometric systems", Pattern Recognition 2005);
  ``weights`` makes it a weighted sum.
- ``"minmax"``: sum of ``(s - min_m) / (max_m - min_m)`` over the same statistics.
- ``"borda"``: rank-level fusion (Ho, Hull & Srihari 1994): a class gets ``n - rank`` points
  from each member over the union of n candidates; no calibration statistics needed.

The rule and its weights are part of the ensemble's stored state, with the statistics and
threshold fitted for them: an ensemble reopened without a rule fuses as it was calibrated.
On the command line one string names both (:func:`parse_fusion`): ``--fusion zsum``,
``--fusion minmax:2,1`` (weighted: one weight per model, in ``-m`` order), ``--fusion borda``.

The decision threshold is calibrated on the *fused* top-1 scores of non-mated searches.
With one member and ``zsum`` the order of candidates and the FPIR/FNIR trade-off equal
that member's own (a monotone map of its scores) — a test checks it.

Enroll and erase go to every member; if one fails, the members already changed are put
back (erase of a new class), so a class is in all galleries or none. A crash between
members can still leave them apart; opening checks that all members hold the same
classes and names the difference.

Example
-------
>>> ens = FusedRecognizer([Recognizer(enc_a, "g/a"), Recognizer(enc_b, "g/b")])  # doctest: +SKIP
>>> ens.enroll("cat", images); ens.calibrate(others, target_fpir=0.01)           # doctest: +SKIP
>>> ens.identify(probe)[0].label                                                    # doctest: +SKIP
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .decisions import UNSET, Decision, Verdict, _Unset, resolve_threshold
from .errors import ConfigError, InvalidInputError, NotCalibratedError, UnknownLabelError
from .evaluate.open_set import DEFAULT_TARGET_FPIR, Calibration, calibrate_threshold, too_few_non_mated
from .gallery import Match
from .recognizer import Recognizer

if TYPE_CHECKING:
    from .fusion_gallery import EnsembleEncoder, EnsembleGallery

__all__ = ["FusedRecognizer", "RULES", "ENSEMBLE_KEY", "parse_fusion"]

RULES = ("zsum", "minmax", "borda")
DEFAULT_RULE = "zsum"
ENSEMBLE_KEY = "ensemble"


def parse_fusion(spec: str, members: int) -> tuple[str, list[float] | None]:
    """``"RULE[:W1,W2,...]"`` -> ``(rule, weights)`` for an ensemble of ``members`` models
    (weights None: equal). ConfigError naming the problem otherwise.

    >>> parse_fusion("minmax:2,1", 2)
    ('minmax', [2.0, 1.0])
    >>> parse_fusion("borda", 3)
    ('borda', None)
    """
    rule, _, weights = spec.strip().partition(":")
    rule = rule.strip().lower()
    if rule not in RULES:
        raise ConfigError(f"unknown fusion rule {rule!r} in {spec!r}: choose one of {', '.join(RULES)}, "
                          "optionally with one weight per model (e.g. zsum:2,1)")
    if not weights.strip():
        return rule, None
    try:
        w = [float(x) for x in weights.split(",")]
    except ValueError:
        raise ConfigError(f"fusion weights in {spec!r} must be numbers separated by commas") from None
    if len(w) != members:
        raise ConfigError(f"fusion {spec!r} gives {len(w)} weight(s) for {members} models: one per model, "
                          "in the order the models are given")
    if not all(np.isfinite(w)) or min(w) < 0 or sum(w) == 0:
        raise ConfigError(f"fusion weights in {spec!r} must be finite, non-negative and not all 0")
    return rule, w


def fusion_spec(rule: str, weights: Sequence[float] | None) -> str:
    """The ``RULE[:W1,...]`` string of a rule and weights (none written when they are all 1)."""
    if weights is None or all(w == 1 for w in weights):
        return rule
    return rule + ":" + ",".join(f"{w:g}" for w in weights)


class FusedRecognizer:
    """Identify with several encoders at once, fusing their per-class scores.

    Parameters
    ----------
    members : Recognizers, one per encoder, each on its own gallery.
    rule : ``"zsum"``, ``"minmax"`` or ``"borda"`` (see the module docstring); None (default):
        the rule stored with the ensemble's state, else ``"zsum"``. A rule (or weights) other
        than the stored ones leaves the ensemble uncalibrated until :meth:`calibrate`, which
        stores them with the new statistics and threshold.
    weights : one weight per member; None (default): the stored ones, else equal.
    adopt : build the ensemble on galleries already enrolled on their own or in another
        ensemble (they must hold the same classes); it needs :meth:`calibrate` before use.
    threshold : a fused decision threshold that overrides the calibrated one (not stored).

    ``Recognizer([enc_a, enc_b], gallery="g/")`` builds one on a single gallery folder
    (``g/model-0``, ``g/model-1``: see :func:`~megaclass.fusion_gallery.open_ensemble`).
    It offers what the CLI and the service use of a Recognizer (enroll, enroll_many,
    add_samples, erase, identify, verify, calibrate, ``gallery``, ``encoder``); its
    embeddings are the members' side by side (:meth:`embed`, :meth:`split`).

    Attributes
    ----------
    stats_ : per member ``{"mean", "std", "min", "max"}`` of non-mated top-1 scores (set by
        :meth:`calibrate`, read back from the galleries), or None.
    threshold : the fused decision threshold, or None before calibration.
    calibration_ : the fused calibration (threshold, achieved FPIR, interval), or None.
    """

    def __init__(self, members: Sequence[Recognizer], *, rule: str | None = None,
                 weights: Sequence[float] | None = None, adopt: bool = False,
                 threshold: float | None = None) -> None:
        members = list(members)
        if not members:
            raise ConfigError("an ensemble needs at least one member recognizer")
        if rule is not None and rule not in RULES:
            raise ConfigError(f"fusion rule must be one of {', '.join(RULES)}, got {rule!r}")
        paths = [str(m.gallery.path) for m in members]
        if len(set(paths)) != len(paths):
            raise ConfigError("each member needs its own gallery (one gallery per model)")
        self.members = members
        self.fingerprints = [m.fingerprint for m in members]
        self.stats_: list[dict[str, float]] | None = None
        self._threshold: float | None = None
        self.calibration_: dict | None = None
        self._override = threshold
        stored = None if adopt else members[0].gallery.get_setting(ENSEMBLE_KEY)
        self.rule: str = rule or (stored or {}).get("rule") or DEFAULT_RULE
        if weights is None and stored is not None and stored.get("rule") == self.rule \
                and len(stored.get("weights") or ()) == len(members):
            weights = stored["weights"]  # the stored weights go with the stored rule
        self.weights = self._check_weights(weights, len(members))
        self._load_state(adopt)

    @staticmethod
    def _check_weights(weights: Sequence[float] | None, n: int) -> np.ndarray:
        w = np.ones(n) if weights is None else np.asarray(weights, dtype=np.float64)
        if w.shape != (n,) or not np.all(np.isfinite(w)) or (w < 0).any() or w.sum() == 0:
            raise ConfigError(f"weights must be {n} finite non-negative numbers, not all 0")
        return w

    @property
    def fusion(self) -> str:
        """The rule and weights as one ``RULE[:W1,...]`` string (see :func:`parse_fusion`)."""
        return fusion_spec(self.rule, self.weights.tolist())

    def stored_fusion(self) -> str | None:
        """The rule and weights the ensemble's stored state was saved with, or None when it
        has none yet (a new ensemble, before its first enroll)."""
        st = self.members[0].gallery.get_setting(ENSEMBLE_KEY)
        if st is None or not st.get("rule"):
            return None
        return fusion_spec(st["rule"], st.get("weights"))

    def check_stored_fusion(self) -> None:
        """ConfigError when the ensemble has a stored rule (or weights) other than this one's:
        for the entry points that may set the rule of a new ensemble but not change it (only
        :meth:`calibrate` re-fits the statistics and threshold that go with a rule)."""
        stored = self.stored_fusion()
        if stored is not None and stored != self.fusion:
            raise ConfigError(
                f"ensemble {Path(str(self.members[0].gallery.path)).parent} fuses by its stored rule "
                f"--fusion {stored}, not {self.fusion}: leave --fusion out to use it, or "
                f"change the rule with `megaclass calibrate --fusion {self.fusion}` (which re-fits "
                "statistics and threshold)")

    # -- state shared by the member galleries -------------------------------------------
    def _load_state(self, adopt: bool) -> None:
        states = [m.gallery.get_setting(ENSEMBLE_KEY) for m in self.members]
        if adopt:
            states = [None] * len(states)
        for m, st in zip(self.members, states, strict=True):
            if adopt:
                continue
            if st is not None and st["members"] != self.fingerprints:
                raise ConfigError(
                    f"gallery {m.gallery.path} belongs to an ensemble of {len(st['members'])} models "
                    f"({', '.join(st['members'])}); opened with {len(self.members)} "
                    f"({', '.join(self.fingerprints)}): open it with the same models, in order")
            if st is None and len(m.gallery):
                raise ConfigError(f"gallery {m.gallery.path} holds classes enrolled outside this "
                                  "ensemble: give each member an empty gallery")
        a = self.members[0]
        odd = next((m for m in self.members if len(m.gallery) != len(a.gallery)), None)
        if odd is None and adopt:
            odd = next((m for m in self.members if set(m.gallery.labels()) != set(a.gallery.labels())), None)
        if odd is not None:
            diff = sorted(set(a.gallery.labels()) ^ set(odd.gallery.labels()))[:3]
            raise ConfigError(f"member galleries disagree ({len(a.gallery)} vs {len(odd.gallery)} classes, "
                              f"e.g. {diff}): erase those classes and enroll them again")
        st = states[0]
        if st is not None and fusion_spec(st.get("rule", ""), st.get("weights")) == self.fusion:
            self.stats_, self._threshold = st.get("stats"), st.get("threshold")
            self.calibration_ = st.get("calibration")

    def _save_state(self) -> None:
        state = {"members": self.fingerprints, "rule": self.rule, "weights": self.weights.tolist(),
                 "stats": self.stats_, "threshold": self._threshold, "calibration": self.calibration_}
        for m in self.members:
            m.gallery.set_setting(ENSEMBLE_KEY, state)

    # -- what the CLI and the service read of a recognizer --------------------------------
    @property
    def threshold(self) -> float | None:
        """The fused decision threshold: the one given to the constructor, else the calibrated one."""
        return self._override if self._override is not None else self._threshold

    @threshold.setter
    def threshold(self, value: float | None) -> None:
        self._threshold = value

    @property
    def calibrated(self) -> bool:
        return self.threshold is not None

    @property
    def fingerprint(self) -> str:
        """The members' fingerprints joined by ``+`` (in order)."""
        return "+".join(self.fingerprints)

    @property
    def templates(self) -> str:
        """The template mode of the members (``"mean"`` or ``"each"``)."""
        return self.members[0].templates

    @property
    def encoder(self) -> EnsembleEncoder:
        """What callers read of an encoder (input contract, dim), for the whole ensemble."""
        from .fusion_gallery import EnsembleEncoder

        return EnsembleEncoder([m.encoder for m in self.members])

    @property
    def gallery(self) -> EnsembleGallery:
        """The member galleries seen as one (:class:`~megaclass.fusion_gallery.EnsembleGallery`)."""
        from .fusion_gallery import EnsembleGallery

        return EnsembleGallery(self)

    @property
    def dims(self) -> list[int]:
        return [m.gallery.dim for m in self.members]

    def decision_threshold(self, threshold: float | None | _Unset = UNSET) -> float | None:
        """As :meth:`Recognizer.decision_threshold`, for the fused threshold: ``threshold`` when
        given (None: candidates only), else the calibrated one, else NotCalibratedError."""
        return resolve_threshold(threshold, calibrated=self.threshold, where=self.gallery.path)

    # -- gallery operations --------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.members[0].gallery)

    def __contains__(self, label: str) -> bool:
        return label in self.members[0].gallery

    def _all_or_none(self, label_sets: list[str], replace: bool, work) -> list:
        """Run ``work(member)`` on every member; when one fails, put the members already
        changed back (new classes erased, replaced ones restored) and re-raise."""
        if not len(self.members[0].gallery):
            self._save_state()
        saved = {lb: [(m.gallery.templates(lb), m.gallery.class_meta(lb)) for m in self.members]
                 for lb in label_sets if replace and lb in self}
        done, out = [], []
        try:
            for m in self.members:
                out.append(work(m))
                done.append(m)
        except BaseException:
            for i, m in enumerate(done):
                for lb in label_sets:
                    if lb in saved:
                        m.gallery.enroll(lb, *saved[lb][i], replace=True)
                    elif lb in m.gallery:
                        m.gallery.erase(lb)
            raise
        return out

    def enroll(self, label: str, samples, meta: dict | None = None, *, replace: bool = False) -> int:
        """Enroll ``label`` in every member's gallery, or in none (members done are undone)."""
        return self._all_or_none([label], replace, lambda m: m.enroll(label, samples, meta,
                                                                       replace=replace))[0]

    def enroll_many(self, items, *, replace: bool = False, progress=None, chunk_images: int = 4096) -> int:
        """:meth:`Recognizer.enroll_many` on every member (the items are read once into memory);
        all classes in all members, or none. ``progress(n)`` counts classes once, not per member."""
        items = list(items)
        labels = [it[0] for it in items if isinstance(it, tuple | list) and it]
        counted = [0, 0]  # classes reported by all members together, classes passed on

        def tick(n: int) -> None:
            counted[0] += n
            step = counted[0] // len(self.members) - counted[1]
            if step > 0 and progress is not None:
                counted[1] += step
                progress(step)

        return self._all_or_none(labels, replace, lambda m: m.enroll_many(
            items, replace=replace, progress=tick, chunk_images=chunk_images))[0]

    def add_samples(self, label: str, samples) -> int:
        """Add samples to an enrolled class in every member (all members or none)."""
        if label not in self:
            raise UnknownLabelError(f"cannot add samples to {label!r}: it is not enrolled")
        return self._all_or_none([label], True, lambda m: m.add_samples(label, samples))[0]

    def erase(self, label: str) -> int:
        """Erase ``label`` from every member (UnknownLabelError when absent); returns the
        number of templates removed from the first member."""
        missing = [str(m.gallery.path) for m in self.members if label not in m.gallery]
        if missing:
            raise UnknownLabelError(f"cannot erase {label!r}: it is not enrolled in {', '.join(missing)}")
        return [m.erase(label) for m in self.members][0]

    # -- scoring ---------------------------------------------------------------------------
    def embed(self, samples) -> np.ndarray:
        """The samples' ensemble embeddings: each member's, side by side ``(N, sum of dims)``
        (member order; :meth:`split` takes them apart)."""
        return np.concatenate([m.embed(samples) for m in self.members], axis=1)

    def split(self, vectors) -> list[np.ndarray]:
        """Ensemble embeddings ``(N, sum of dims)`` -> one ``(N, dim_m)`` array per member."""
        if isinstance(vectors, list | tuple):
            parts = [np.asarray(v, dtype=np.float32) for v in vectors]
            if len(parts) != len(self.members):
                raise InvalidInputError(f"{len(parts)} embedding arrays for {len(self.members)} members")
            return parts
        v = np.asarray(vectors, dtype=np.float32)
        if v.ndim == 1:
            v = v[None, :]
        if v.ndim != 2 or v.shape[1] != sum(self.dims):
            raise InvalidInputError(
                f"ensemble embeddings have {sum(self.dims)} columns (the members' {self.dims} side "
                f"by side), got shape {tuple(v.shape)}")
        return np.split(v, np.cumsum(self.dims)[:-1], axis=1)

    def _norm(self, i: int, s: np.ndarray) -> np.ndarray:
        st = self._need_stats()[i]
        if self.rule == "zsum":
            return (s - st["mean"]) / max(st["std"], 1e-6)
        return (s - st["min"]) / max(st["max"] - st["min"], 1e-6)

    def _need_stats(self) -> list[dict[str, float]]:
        """The members' non-mated statistics (NotCalibratedError when missing; borda needs
        none and gets an empty list)."""
        if self.stats_ is not None:
            return self.stats_
        if self.rule == "borda":
            return []
        raise NotCalibratedError(f"fusion rule {self.rule!r} normalises scores with non-mated "
                                 "statistics: calibrate the ensemble first (or use rule='borda')")

    def search_vectors(self, vectors, k: int = 5, *, where: dict | None = None) -> list[list[Match]]:
        """Fused best ``k`` classes per query from ensemble embeddings (best first)."""
        vectors = self.split(vectors)
        self._need_stats()
        n = {len(v) for v in vectors}
        if len(n) != 1:
            raise InvalidInputError(f"members embedded different numbers of samples: {sorted(n)}")
        hits = [m.gallery.search(v, k=2 * k, where=where) for m, v in zip(self.members, vectors, strict=True)]
        cache: list[dict[str, np.ndarray]] = [{} for _ in self.members]  # label -> templates, per member
        out: list[list[Match]] = []
        for q in range(len(vectors[0])):
            union = list(dict.fromkeys(c.label for h in hits for c in h[q]))
            if not union:
                out.append([])
                continue
            fused = np.zeros(len(union))
            for i, m in enumerate(self.members):
                t = cache[i]
                s = np.array([float((t.setdefault(lb, m.gallery.templates(lb)) @ vectors[i][q]).max())
                              for lb in union])
                if self.rule == "borda":
                    fused += self.weights[i] * (len(union) - np.argsort(np.argsort(-s, kind="stable")))
                else:
                    fused += self.weights[i] * self._norm(i, s)
            order = np.argsort(-fused, kind="stable")[:k]
            out.append([Match(union[j], float(fused[j])) for j in order])
        return out

    def calibrate(self, non_mated_samples=None, target_fpir: float = DEFAULT_TARGET_FPIR, *,
                  vectors=None, save: bool = True, allow_few: bool = False) -> Calibration:
        """Fit each member's non-mated score statistics, then the fused threshold for
        ``target_fpir`` on the same non-mated searches (samples, or ensemble ``vectors``).
        Too few searches for the target (fewer than 10/FPIR) raise InvalidInputError
        unless ``allow_few``, as :meth:`Recognizer.calibrate`."""
        vectors = self.split(self.embed(non_mated_samples) if vectors is None else vectors)
        if not len(vectors[0]):
            raise InvalidInputError("calibration needs non-mated searches embedded by every member")
        if len(self) == 0:
            raise InvalidInputError("the ensemble's galleries are empty: enroll classes first")
        stats = []
        for m, v in zip(self.members, vectors, strict=True):
            top = np.array([h[0].score if h else -1.0 for h in m.gallery.search(v, k=1)])
            stats.append({"mean": float(top.mean()), "std": float(top.std()),
                          "min": float(top.min()), "max": float(top.max())})
        self.stats_ = stats
        fused = np.array([h[0].score if h else -np.inf for h in self.search_vectors(vectors, 1)])
        cal = calibrate_threshold(fused, target_fpir)
        few = too_few_non_mated(cal)
        if few and not allow_few:
            raise InvalidInputError(few + " (or pass allow_few=True)")
        if few:
            warnings.warn(few, stacklevel=2)
        self._threshold, self.calibration_ = cal.threshold, {**cal.to_dict(), "model": self.fingerprint}
        if save:
            self._save_state()
        return cal

    def calibrate_vectors(self, vectors, target_fpir: float = DEFAULT_TARGET_FPIR, **kw) -> Calibration:
        """:meth:`calibrate` on ensemble embeddings already computed."""
        return self.calibrate(None, target_fpir, vectors=vectors, **kw)

    def identify(self, samples, k: int = 5, *, where: dict | None = None, threshold=UNSET) -> list[Decision]:
        """1:N with fused scores: the best class, or None below the fused threshold
        (``threshold`` as in :meth:`Recognizer.identify`; None: candidates only)."""
        thr = self.decision_threshold(threshold)
        return self.identify_vectors(self.embed(samples), k, where=where, threshold=thr)

    def identify_vectors(self, vectors, k: int = 5, *, where: dict | None = None,
                         threshold=UNSET) -> list[Decision]:
        """:meth:`identify` on ensemble embeddings (the members' side by side)."""
        thr = self.decision_threshold(threshold)
        res = self.search_vectors(vectors, k, where=where)
        return [Decision(label=(c[0].label if c and (thr is None or c[0].score >= thr) else None),
                         score=c[0].score if c else float("-inf"), candidates=c) for c in res]

    def verify(self, sample, label: str, *, threshold=UNSET) -> Verdict:
        """1:1 with the fused score of ``label`` (each member's best template, normalised and
        weighted as in identify; rule ``borda`` ranks classes and cannot score one: ConfigError)."""
        thr = self.decision_threshold(threshold)
        if self.rule == "borda":
            raise ConfigError("rule 'borda' fuses ranks among candidates, not scores: verify (1:1) "
                              "needs rule 'zsum' or 'minmax'")
        self._need_stats()
        if label not in self:
            raise UnknownLabelError(f"cannot verify against {label!r}: it is not enrolled")
        vectors = self.split(self.embed(sample)[:1])
        best = [np.array([(m.gallery.templates(label) @ v[0]).max()])
                for m, v in zip(self.members, vectors, strict=True)]
        score = float(sum(self.weights[i] * self._norm(i, s)[0] for i, s in enumerate(best)))
        return Verdict(label, thr is None or score >= thr, score, thr)

    # -- lifecycle -------------------------------------------------------------------------
    def close(self) -> None:
        for m in self.members:
            m.close()

    def __enter__(self) -> FusedRecognizer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

