import numpy as np
import pytest

from megaclass.errors import InvalidInputError
from megaclass.evaluate import (
    calibrate_threshold,
    det_curve,
    fnir,
    fnir_at_fpir,
    fpir,
    top_k_accuracy,
    true_ranks,
)


def test_top_k_and_ranks():
    cands = [["a", "b", "c"], ["b", "a", "c"], ["x", "y", "z"]]
    assert list(true_ranks(cands, ["a", "a", "a"])) == [1, 2, 0]
    acc = top_k_accuracy(cands, ["a", "a", "a"], ks=(1, 2, 3))
    assert acc == pytest.approx({"top1": 1 / 3, "top2": 2 / 3, "top3": 2 / 3})


def test_fpir_fnir_definitions():
    nm = np.array([0.1, 0.5, 0.9, 0.3])
    assert fpir(nm, 0.5) == 0.5
    # a wrong rank-1 answer is a miss even above threshold
    assert fnir([0.9, 0.8, 0.2], [True, False, True], 0.5) == pytest.approx(2 / 3)


def test_calibration_meets_target_on_calibration_set():
    rng = np.random.default_rng(0)
    s = rng.normal(size=10_000)
    cal = calibrate_threshold(s, 0.01)
    assert cal.achieved_fpir <= 0.01
    assert cal.achieved_fpir == pytest.approx(0.01, abs=1e-4)
    lo, hi = cal.fpir_ci95
    assert lo < 0.01 < hi


def test_calibration_generalises_to_held_out_within_sampling_error():
    rng = np.random.default_rng(1)
    target, n = 0.01, 20_000
    cal = calibrate_threshold(rng.normal(size=n), target)
    held_out = rng.normal(size=n)
    measured = fpir(held_out, cal.threshold)
    sigma = np.sqrt(target * (1 - target) / n)
    assert abs(measured - target) < 4 * np.sqrt(2) * sigma


def test_fnir_at_fpir_and_det_curve():
    rng = np.random.default_rng(2)
    mated = rng.normal(2.0, 1.0, 2000)
    nm = rng.normal(0.0, 1.0, 2000)
    ok = np.ones(2000, bool)
    r = fnir_at_fpir(mated, ok, nm, 0.05)
    assert r["fpir"] <= 0.05 and 0.1 < r["fnir"] < 0.5
    curve = det_curve(mated, ok, nm)
    assert np.all(np.diff(curve["fpir"]) <= 1e-12)  # FPIR falls as the threshold rises
    assert np.all(np.diff(curve["fnir"]) >= -1e-12)


def test_bad_input():
    with pytest.raises(InvalidInputError, match="target FPIR"):
        calibrate_threshold([0.1, 0.2], 0.0)
    with pytest.raises(InvalidInputError, match="NaN"):
        calibrate_threshold([0.1, float("nan")], 0.1)
    with pytest.raises(InvalidInputError, match="at least one"):
        fpir([], 0.5)
