"""Head-comparison features with validation/test drawings for every s-th class only (1M runs)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from megaclass.bench import heads_accuracy
from megaclass.bench.heads_accuracy import glyph_features
from megaclass.errors import ConfigError


def test_strided_features_are_the_full_caches_rows_of_every_sth_class(tmp_path):
    full = glyph_features(tmp_path / "full", 10, log=None)
    once = glyph_features(tmp_path / "once", 10, eval_stride=3, log=None)
    grown = glyph_features(tmp_path / "grown", 5, eval_stride=3, chunk=2, log=None)  # uneven chunks
    grown = glyph_features(grown, 10, eval_stride=3, chunk=2, log=None)             # then grown
    for split, n in (("train", 6), ("val", 1), ("test", 2)):
        f = np.load(full / f"{split}_x.npy")
        want = f if split == "train" else f.reshape(10, n, -1)[::3].reshape(-1, f.shape[1])
        assert np.load(once / f"{split}_x.npy").shape == want.shape
        np.testing.assert_allclose(np.load(once / f"{split}_x.npy"), want, atol=1e-5)
        np.testing.assert_allclose(np.load(grown / f"{split}_x.npy"), want, atol=1e-5)
    assert json.loads((once / "meta.json").read_text())["eval_stride"] == 3
    again = glyph_features(once, 10, log=None)  # asked for every class: embedded again, not reused
    np.testing.assert_allclose(np.load(again / "val_x.npy"), np.load(full / "val_x.npy"), atol=1e-5)
    with pytest.raises(ConfigError, match="eval_stride"):
        glyph_features(tmp_path / "bad", 10, eval_stride=0, log=None)


def test_a_head_trained_on_strided_features_is_scored_on_the_right_classes(tmp_path):
    feats = glyph_features(tmp_path / "f", 30, eval_stride=4, log=None)
    res = heads_accuracy.train_worker({
        "features": str(feats), "classes": 30, "head": "cosface", "optimizer": "sgd", "lr": 0.03,
        "batch": 32, "max_steps": 150, "eval_every": 50, "patience": 10, "max_seconds": 1e9,
        "min_gain": 0.0, "val_samples": 8, "test_samples": 16})
    assert res["test_samples"] == 16 and res["val_samples"] == 8  # 8 classes x 1 and x 2 drawings
    assert res["test_top1"] > 0.6  # labels 0, 4, 8, ...: scored as class j*4, not j
