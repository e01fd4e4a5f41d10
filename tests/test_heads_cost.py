"""The head step cost model (bench/heads_cost.py): its arithmetic and its check against measurements."""

import pytest

from megaclass.bench.heads_cost import A100, calibrate, check, max_classes, predict, step_cost


def test_costs_scale_as_the_heads_do():
    dense = step_cost("softmax", 1_000_000, 256, 256)
    assert dense["flops"] == 6 * 256 * 1_000_000 * 256
    pfc = step_cost("partial_fc", 1_000_000, 256, 256, sample_rate=0.1)
    assert pfc["flops"] == pytest.approx(0.1 * dense["flops"])
    hier = step_cost("hierarchical", 1_000_000, 256, 256)
    assert hier["flops"] < 0.01 * dense["flops"]                # ~2 sqrt(C) rows per sample instead of C
    assert 0.5 < step_cost("adaptive", 1_000_000, 256, 256)["flops"] / dense["flops"] < 0.6
    with pytest.raises(ValueError, match="no cost model"):
        step_cost("triplet", 10, 4, 4)


def test_calibrated_model_reproduces_its_anchor_and_flags_outliers():
    anchor = {"head": "softmax", "classes": 100_000, "dim": 128, "median_step_s": 0.5}
    flops = calibrate(0.5, step_cost("softmax", 100_000, 128, 256))
    slow = {"head": "partial_fc", "classes": 100_000, "dim": 128, "median_step_s": 0.5}
    rows = check([anchor, slow, {"head": "softmax", "error": "timed out"}], flops, 1e10)
    assert [r["head"] for r in rows] == ["softmax", "partial_fc"]
    assert rows[0]["measured_over_predicted"] == pytest.approx(1.0)
    assert rows[1]["measured_over_predicted"] > 5                 # 10x less work measured as slow: flagged
    assert predict(step_cost("softmax", 10, 4, 4), 1e9, 1.0) > 100  # bandwidth-bound when bytes dominate


def test_max_classes_on_one_gpu():
    # float32 centres + one momentum buffer at D=256: 2 KiB per class -> tens of millions in 80 GB
    n = max_classes("partial_fc", 256, A100["memory_bytes"])
    assert 25_000_000 < n < 40_000_000
    assert max_classes("softmax", 256, A100["memory_bytes"]) < n / 2   # + B x C logits, probabilities, grads
