"""A head-training run cut short continues from its last evaluation and ends as an uncut run."""

from __future__ import annotations

import json

import numpy as np
import pytest

from megaclass.bench import heads, heads_accuracy
from megaclass.errors import ConfigError


def _features(folder, c=12, d=16):
    per = {"train": 6, "val": 2, "test": 2}
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((c, d))
    for split, n in per.items():
        x = np.repeat(centres, n, axis=0) + 0.7 * rng.standard_normal((c * n, d))
        np.save(folder / f"{split}_x.npy", x.astype(np.float32))
    (folder / "meta.json").write_text(json.dumps({"per_split": per, "classes": c, "done": c}))


class _Cut(Exception):
    pass


@pytest.mark.parametrize("head,optimizer,lr", [("softmax", "sgd", 0.5), ("partial_fc", "adam", 0.01)])
def test_a_cut_run_resumes_and_ends_like_an_uncut_one(head, optimizer, lr, tmp_path, monkeypatch):
    _features(tmp_path)
    spec = {"features": str(tmp_path), "classes": 12, "head": head, "optimizer": optimizer, "lr": lr,
            "batch": 16, "max_steps": 40, "eval_every": 10, "patience": 2, "max_seconds": 1e9,
            "min_gain": 0.0, "val_samples": 24, "test_samples": 24,
            "head_options": {"sample_rate": 0.5} if head == "partial_fc" else {}}
    uncut = heads_accuracy.train_worker(spec)

    run_dir = tmp_path / "run"
    real_step, calls = heads.train_step, []

    def cut_after_25(*args):
        calls.append(1)
        if len(calls) > 25:
            raise _Cut
        return real_step(*args)

    monkeypatch.setattr(heads, "train_step", cut_after_25)
    with pytest.raises(_Cut):
        heads_accuracy.train_worker({**spec, "checkpoint_dir": str(run_dir)})
    assert json.loads((run_dir / "progress.json").read_text())["loop"]["step"] == 20
    monkeypatch.setattr(heads, "train_step", real_step)
    resumed = heads_accuracy.train_worker({**spec, "checkpoint_dir": str(run_dir)})

    def same(r):
        return ([(p["step"], p["val_top1"], p["loss"], p["lr"]) for p in r["curve"]],
                r["steps"], r["stopped_by"], r["test_top1"], r["test_top5"])

    assert same(resumed) == same(uncut)
    assert len(list(run_dir.glob("state-*.safetensors"))) == 1     # older states removed

    with pytest.raises(ConfigError, match="another setting"):    # another spec is refused, not mixed
        heads_accuracy.train_worker({**spec, "lr": lr * 2, "checkpoint_dir": str(run_dir)})
