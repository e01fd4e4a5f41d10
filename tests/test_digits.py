"""Few-shot identification of real handwritten digits (scikit-learn's bundled set)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from megaclass import cli
from megaclass.errors import ConfigError
from megaclass.evaluate.digits import _trial_accuracy, load_digit_images, one_shot_digits


def test_the_digits_are_real_light_on_dark_images():
    x, y = load_digit_images()
    assert x.shape == (1797, 8, 8) and set(np.unique(y)) == set(range(10))
    border = np.concatenate([x[:, 0], x[:, -1], x[:, :, 0], x[:, :, -1]], axis=1)
    assert border.mean() < 0.5  # a dark border: the handwriting contract does not invert them
    assert x.mean() < 0.5 and x.max() == 1.0  # light ink on a dark background


def test_a_trial_scores_perfect_features_perfectly_and_random_ones_near_chance():
    _, y = load_digit_images()
    onehot = np.eye(10, dtype=np.float32)[y]
    rng = np.random.default_rng(0)
    assert _trial_accuracy(onehot, y, rng, 1) == 1.0
    noise = rng.standard_normal((len(y), 64)).astype(np.float32)
    assert 0.03 < _trial_accuracy(noise, y, rng, 1) < 0.2


def test_model_and_baseline_see_the_same_trials(tiny_encoder):
    r = one_shot_digits(tiny_encoder, trials=20, shots=1, seed=3)
    assert r["trials"] == 20 and r["digits"] == 1797
    # raw pixels one-shot on these digits are far above chance (10 %) and below perfect
    assert 0.4 < r["baseline"]["mean"] < 0.9
    assert 0.1 < r["model"]["mean"] <= 1.0
    again = one_shot_digits(tiny_encoder, trials=20, shots=1, seed=3)
    assert again == r  # seeded


def test_bad_options_are_refused(tiny_encoder):
    with pytest.raises(ConfigError, match="shots"):
        one_shot_digits(tiny_encoder, shots=0)


def test_bench_digits_cli(tiny_model_dir):
    cli._register_area_commands()
    r = CliRunner().invoke(cli.app, ["bench", "digits", "-m", str(tiny_model_dir), "--trials", "5",
                                 "--shots", "1", "--shots", "3", "--json"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.output)
    assert [x["shots"] for x in out["results"]] == [1, 3]
