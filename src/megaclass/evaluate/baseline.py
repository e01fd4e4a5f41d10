"""Baselines measured by the same evaluation as the model: nearest class mean.

A baseline answers "how much does the learned embedding buy?". :class:`NearestClassMean`
stores one template per class, the L2-normalised mean of its samples' features, and
scores a query by cosine similarity to each template: with raw pixels as features
(:func:`pixel_baseline`) it is the classic raw-pixel baseline; with another model's
embeddings (:func:`model_baseline`) it is that model with a "mean" gallery. It has the
small interface :func:`~megaclass.evaluate.pipeline.evaluate_recognizer` uses (``embed``,
``gallery.search``, ``threshold``...), so every metric, curve and table of the report is
computed for it by the very same code as for the model.

Example
-------
>>> import numpy as np
>>> base = NearestClassMean.fit(np.eye(3, 4, dtype=np.float32), ["a", "b", "c"])
>>> [m.label for m in base.gallery.search(base.embed(np.eye(3, 4)[1:2]), k=2)[0]]
['b', 'a']
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import numpy as np

from ..errors import ConfigError, InvalidInputError
from ..gallery.gallery import Match
from .open_set import calibrate_threshold, fnir, fpir

if TYPE_CHECKING:
    from ..data.input_spec import InputSpec

PIXELS = "pixels"


def normed(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm (an all-zero row stays zero)."""
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def pixel_templates(pixels: np.ndarray, per_class: int) -> np.ndarray:
    """Class means of flattened pixels for ``per_class`` consecutive samples per class, normalised."""
    t = pixels.reshape(-1, per_class, pixels.shape[1]).mean(axis=1)
    return t / np.linalg.norm(t, axis=1, keepdims=True)


def _flat(images) -> np.ndarray:
    a = images.numpy() if hasattr(images, "numpy") else np.asarray(images)
    return a.reshape(len(a), -1).astype(np.float32)


class ArrayGallery:
    """An in-memory gallery of one template per class (exact search, no persistence)."""

    def __init__(self, templates: np.ndarray, labels: Sequence[str], samples: Sequence[int]):
        self._t = np.ascontiguousarray(templates, dtype=np.float32)
        self._labels = list(labels)
        self._row = {lb: i for i, lb in enumerate(self._labels)}
        self._samples = [int(n) for n in samples]
        self.dim = int(self._t.shape[1])

    def search(self, vectors, k: int = 5) -> list[list[Match]]:
        q = np.asarray(vectors, dtype=np.float32)
        k = min(k, len(self._labels))
        out: list[list[Match]] = []
        step = max(1, 4_000_000 // max(1, len(self._labels)))  # a block holds <= 4M scores
        for a in range(0, len(q), step):
            s = q[a:a + step] @ self._t.T
            top = np.argpartition(-s, k - 1, axis=1)[:, :k] if k < s.shape[1] else \
                np.tile(np.arange(s.shape[1]), (len(s), 1))
            for row, cand in zip(s, top, strict=True):
                cand = cand[np.argsort(-row[cand], kind="stable")]
                out.append([Match(self._labels[j], float(row[j])) for j in cand])
        return out

    def labels(self) -> list[str]:
        return list(self._labels)

    def templates(self, label: str) -> np.ndarray:
        return self._t[self._row[label]][None, :]

    def class_meta(self, label: str) -> dict:
        return {"_samples": self._samples[self._row[label]]}

    def __len__(self) -> int:
        return len(self._labels)

    def __contains__(self, label) -> bool:
        return label in self._row


class NearestClassMean:
    """Nearest class mean on the cosine of features: the baseline recognizer.

    Parameters
    ----------
    templates : ``(C, D)`` L2-normalised class means.
    labels : the class of each row.
    features : images -> ``(N, D)`` features (default: flattened pixels).
    samples : samples averaged per class (the report's frequency buckets).
    threshold : accept threshold, when one was calibrated.

    Attributes
    ----------
    gallery : an :class:`ArrayGallery` of the templates.
    """

    def __init__(self, templates: np.ndarray, labels: Sequence[str],
                 features: Callable | None = None, samples: Sequence[int] | None = None,
                 threshold: float | None = None):
        self.features = features or _flat
        self.gallery = ArrayGallery(templates, labels, samples or [1] * len(labels))
        self.threshold = threshold

    @classmethod
    def fit(cls, images, labels: Sequence[str], features: Callable | None = None,
            chunk: int = 2048) -> NearestClassMean:
        """Templates from samples and their labels (class order: first appearance)."""
        labels = list(labels)
        if len(labels) != len(images) or not labels:
            raise InvalidInputError(f"{len(images)} samples but {len(labels)} labels")
        features = features or _flat
        names = list(dict.fromkeys(labels))
        row = {lb: i for i, lb in enumerate(names)}
        idx = np.array([row[lb] for lb in labels])
        sums: np.ndarray | None = None
        for a in range(0, len(labels), chunk):
            f = np.asarray(features(images[a:a + chunk]), dtype=np.float64)
            if sums is None:
                sums = np.zeros((len(names), f.shape[1]))
            np.add.at(sums, idx[a:a + chunk], f)
        if sums is None:  # not reached: labels is not empty
            raise InvalidInputError("no samples")
        counts = np.bincount(idx, minlength=len(names))
        return cls(normed(sums / counts[:, None]), names, features, counts.tolist())

    def embed(self, images) -> np.ndarray:
        """Normalised features of samples; an ``(N, D)`` float array is taken as features."""
        return normed(self.features(images))


def pixel_baseline(images, labels: Sequence[str]) -> NearestClassMean:
    """The raw-pixel baseline: nearest class mean on L2-normalised model-input pixels."""
    return NearestClassMean.fit(images, labels)


def model_baseline(model_dir, load_samples: Callable) -> tuple[NearestClassMean, InputSpec]:
    """Another model as the baseline: class means of its embeddings.

    ``load_samples(input_spec)`` returns ``(images, labels)`` of the enrolled samples
    converted by that model's input contract. Returns the baseline and its encoder's
    input spec (queries must be converted by it too).
    """
    import torch

    from ..models.encoder import load_encoder

    enc = load_encoder(model_dir)
    enc.eval()

    def features(images):
        from ..data.images import to_batch

        with torch.inference_mode():
            return enc.embed(to_batch(images, spec=enc.input_spec)).numpy()

    images, labels = load_samples(enc.input_spec)
    return NearestClassMean.fit(images, labels, features), enc.input_spec


def check_classes(baseline: NearestClassMean, gallery_labels: Sequence[str],
                  truth: Sequence[str]) -> str | None:
    """Refuse a baseline that misses query classes; a note when it holds fewer classes."""
    missing = sorted(set(truth) - set(baseline.gallery.labels()))
    if missing:
        raise ConfigError(f"--gallery-samples has no samples of {len(missing):,} query classes, "
                          f"e.g. {missing[0]!r}: the baseline cannot enroll them")
    n, total = len(baseline.gallery), len(gallery_labels)
    if n < total:
        return (f"the baseline enrolled {n:,} of the gallery's {total:,} classes (those in "
                "--gallery-samples): its search is the easier one")
    return None


def resolve(spec: str) -> str:
    """``pixels`` or a model directory (checked to exist)."""
    from pathlib import Path

    if spec == PIXELS:
        return spec
    if not (Path(spec) / "config.json").is_file():
        raise ConfigError(f"--baseline {spec!r} is neither 'pixels' nor a model directory "
                          "(no config.json there)")
    return spec


def pixel_summary(templates: np.ndarray, queries: np.ndarray, non_mated: np.ndarray,
                  calib: np.ndarray, truth: np.ndarray, target: float, extra: float) -> dict:
    """Raw-pixel nearest class mean with the demo's protocol: top-1/top-5 and FNIR/FPIR at a
    threshold calibrated on separate non-mated searches (``calib``)."""
    q = normed(queries) @ templates.T
    top5 = np.argsort(-q, axis=1)[:, :5]
    ranks_ok1 = top5[:, 0] == truth
    ranks_ok5 = (top5 == truth[:, None]).any(axis=1)
    calib_best = (normed(calib) @ templates.T).max(axis=1)
    cal = calibrate_threshold(calib_best, target)
    nm = (normed(non_mated) @ templates.T).max(axis=1)
    best = q.max(axis=1)
    return {"top1": float(ranks_ok1.mean()), "top5": float(ranks_ok5.mean()),
            "threshold": cal.threshold, "fpir": fpir(nm, cal.threshold),
            "fnir": fnir(best, ranks_ok1, cal.threshold),
            "fnir_at_extra_fpir": fnir(best, ranks_ok1,
                                       calibrate_threshold(calib_best, extra).threshold)}
