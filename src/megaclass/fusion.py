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

from collections.abc import Sequence

import numpy as np

from .errors import ConfigError, InvalidInputError, NotCalibratedError
from .evaluate.open_set import Calibration, calibrate_threshold
from .gallery import Match
from .recognizer import Decision, Recognizer

__all__ = ["FusedRecognizer", "RULES", "ENSEMBLE_KEY"]

RULES = ("zsum", "minmax", "borda")
ENSEMBLE_KEY = "ensemble"


class FusedRecognizer:
    """Identify with several encoders at once, fusing their per-class scores.

    Parameters
    ----------
    members : Recognizers, one per encoder, each on its own gallery.
    rule : ``"zsum"``, ``"minmax"`` or ``"borda"`` (see the module docstring).
    weights : one weight per member (default: equal).
    adopt : build the ensemble on galleries already enrolled on their own or in another
        ensemble (they must hold the same classes); it needs :meth:`calibrate` before use.

    Attributes
    ----------
    stats_ : per member ``{"mean", "std", "min", "max"}`` of non-mated top-1 scores (set by
        :meth:`calibrate`, read back from the galleries), or None.
    threshold : the fused decision threshold, or None before calibration.
    """

    def __init__(self, members: Sequence[Recognizer], *, rule: str = "zsum",
                 weights: Sequence[float] | None = None, adopt: bool = False) -> None:
        members = list(members)
        if not members:
            raise ConfigError("an ensemble needs at least one member recognizer")
        if rule not in RULES:
            raise ConfigError(f"fusion rule must be one of {', '.join(RULES)}, got {rule!r}")
        w = np.ones(len(members)) if weights is None else np.asarray(weights, dtype=np.float64)
        if w.shape != (len(members),) or not np.all(np.isfinite(w)) or (w < 0).any() or w.sum() == 0:
            raise ConfigError(f"weights must be {len(members)} finite non-negative numbers, not all 0")
        paths = [str(m.gallery.path) for m in members]
        if len(set(paths)) != len(paths):
            raise ConfigError("each member needs its own gallery (one gallery per model)")
        self.members, self.rule, self.weights = members, rule, w
        self.fingerprints = [m.fingerprint for m in members]
        self.stats_, self.threshold = None, None
        self._load_state(adopt)

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
        if st is not None and st.get("rule") == self.rule:
            self.stats_, self.threshold = st.get("stats"), st.get("threshold")

    def _save_state(self) -> None:
        state = {"members": self.fingerprints, "rule": self.rule, "stats": self.stats_,
                 "threshold": self.threshold}
        for m in self.members:
            m.gallery.set_setting(ENSEMBLE_KEY, state)

    # -- gallery operations --------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.members[0].gallery)

    def __contains__(self, label: str) -> bool:
        return label in self.members[0].gallery

    def enroll(self, label: str, samples, meta: dict | None = None) -> int:
        """Enroll ``label`` in every member's gallery, or in none (members done are undone)."""
        if not len(self.members[0].gallery):
            self._save_state()
        done = []
        try:
            for m in self.members:
                n = m.enroll(label, samples, meta)
                done.append(m)
        except BaseException:
            for m in done:
                m.erase(label)
            raise
        return n

    def erase(self, label: str) -> None:
        """Erase ``label`` from every member (KeyError-like UnknownLabelError when absent)."""
        for m in self.members:
            m.erase(label)

    # -- scoring ---------------------------------------------------------------------------
    def embed(self, samples) -> list[np.ndarray]:
        """Each member's embeddings of the samples."""
        return [m.embed(samples) for m in self.members]

    def _norm(self, i: int, s: np.ndarray) -> np.ndarray:
        st = self.stats_[i]
        if self.rule == "zsum":
            return (s - st["mean"]) / max(st["std"], 1e-6)
        return (s - st["min"]) / max(st["max"] - st["min"], 1e-6)

    def search_vectors(self, vectors: Sequence[np.ndarray], k: int = 5) -> list[list[Match]]:
        """Fused best ``k`` classes per query from each member's embeddings (best first)."""
        if len(vectors) != len(self.members):
            raise InvalidInputError(f"{len(vectors)} embedding arrays for {len(self.members)} members")
        if self.rule != "borda" and self.stats_ is None:
            raise NotCalibratedError(f"fusion rule {self.rule!r} normalises scores with non-mated "
                                     "statistics: calibrate the ensemble first (or use rule='borda')")
        n = {len(v) for v in vectors}
        if len(n) != 1:
            raise InvalidInputError(f"members embedded different numbers of samples: {sorted(n)}")
        hits = [m.gallery.search(v, k=2 * k) for m, v in zip(self.members, vectors, strict=True)]
        cache = [{} for _ in self.members]  # label -> templates, per member
        out = []
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

    def calibrate(self, non_mated_samples=None, target_fpir: float = 1e-3, *,
                  vectors: Sequence[np.ndarray] | None = None, save: bool = True) -> Calibration:
        """Fit each member's non-mated score statistics, then the fused threshold for
        ``target_fpir`` on the same non-mated searches (samples, or ``vectors`` per member)."""
        vectors = self.embed(non_mated_samples) if vectors is None else list(vectors)
        if len(vectors) != len(self.members) or not len(vectors[0]):
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
        self.threshold = cal.threshold
        if save:
            self._save_state()
        return cal

    def identify(self, samples, k: int = 5, *, threshold=...) -> list[Decision]:
        """1:N with fused scores: the best class, or None below the fused threshold."""
        thr = self.threshold if threshold is ... else threshold
        if thr is None and threshold is ...:
            raise NotCalibratedError("the ensemble has no fused threshold: calibrate it on non-mated "
                                     "samples, or pass threshold=None for candidates only")
        res = self.search_vectors(self.embed(samples), k)
        return [Decision(label=(c[0].label if c and (thr is None or c[0].score >= thr) else None),
                         score=c[0].score if c else float("-inf"), candidates=c) for c in res]
