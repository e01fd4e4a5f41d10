"""Real handwriting, few-shot: does what a glyph model learned transfer beyond the generator?

scikit-learn ships 1,797 real handwritten digits (``sklearn.datasets.load_digits``: 8x8
pixels, 16 grey levels, ink light on a dark background, from the UCI "Optical Recognition
of Handwritten Digits" set). A trial enrolls ``shots`` random samples of each digit as the
gallery (one class per digit, the mean of its embeddings as in ``Recognizer.enroll``) and
identifies every other sample: top-1 accuracy among the 10 digits. Many trials give a mean
and a spread. The raw-pixel baseline does the same on L2-normalised pixels of the very
same model inputs, so the difference is what the encoder adds.

Nothing is downloaded: the digits are a file inside the scikit-learn package.

Example
-------
>>> from megaclass.models import Encoder, EncoderConfig
>>> r = one_shot_digits(Encoder(EncoderConfig(dim=16, widths=(8, 16))), trials=3)
>>> sorted(r)[:3], 0 <= r["model"]["mean"] <= 1
(['baseline', 'digits', 'model'], True)
"""

from __future__ import annotations

import numpy as np
import torch

from ..data.images import to_batch
from ..errors import ConfigError


def load_digit_images() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's bundled digits: images ``(1797, 8, 8)`` float32 in [0, 1] and labels."""
    try:
        from sklearn.datasets import load_digits
    except ImportError as exc:  # pragma: no cover - scikit-learn is in the dev extra
        raise ConfigError("the digits check needs scikit-learn (pip install scikit-learn)") from exc
    d = load_digits()
    return (d.images / 16.0).astype(np.float32), d.target.astype(np.int64)


def _trial_accuracy(x: np.ndarray, y: np.ndarray, rng: np.random.Generator, shots: int) -> float:
    """Enroll ``shots`` samples per digit (normalised mean), identify the rest; top-1 accuracy."""
    gallery_idx = np.concatenate([rng.choice(np.flatnonzero(y == c), shots, replace=False)
                                  for c in range(10)])
    mask = np.ones(len(y), bool)
    mask[gallery_idx] = False
    templates = x[gallery_idx].reshape(10, shots, -1).mean(axis=1)
    templates /= np.maximum(np.linalg.norm(templates, axis=1, keepdims=True), 1e-12)
    pred = np.argmax(x[mask] @ templates.T, axis=1)
    return float(np.mean(pred == y[mask]))


def one_shot_digits(encoder, *, trials: int = 200, shots: int = 1, seed: int = 0) -> dict:
    """Few-shot top-1 on real handwritten digits: the encoder vs raw pixels, same trials.

    Returns ``{"model": {"mean", "std", "min", "max"}, "baseline": {...}, "digits": n,
    "trials", "shots"}``.
    """
    if trials < 1 or not 1 <= shots <= 100:
        raise ConfigError(f"trials must be >= 1 and shots in 1..100, got {trials} and {shots}")
    images, labels = load_digit_images()
    batch = to_batch(torch.from_numpy(images), spec=encoder.input_spec)
    emb = encoder.embed(batch).numpy().astype(np.float32)
    pixels = batch.reshape(len(batch), -1).numpy().astype(np.float32)
    pixels /= np.maximum(np.linalg.norm(pixels, axis=1, keepdims=True), 1e-12)
    out: dict = {"digits": int(len(labels)), "trials": trials, "shots": shots}
    for name, feats in (("model", emb), ("baseline", pixels)):
        rng = np.random.default_rng(seed)  # the same trials for both
        acc = np.array([_trial_accuracy(feats, labels, rng, shots) for _ in range(trials)])
        out[name] = {"mean": float(acc.mean()), "std": float(acc.std()), "min": float(acc.min()),
                     "max": float(acc.max())}
    return out
