"""Cross-checks of the evaluation metrics against scikit-learn and hand-computed cases."""

import numpy as np
import pytest
from sklearn import metrics as skm

from megaclass.errors import InvalidInputError
from megaclass.evaluate import (
    accuracy_by_frequency,
    classification_report,
    cmc_curve,
    confusion_counts,
    det_curve,
    eer,
    fnir,
    fnir_at_fpirs,
    fpir,
    rank1_miss_rate,
    roc_curve,
    tar_at_far,
    top_confusions,
    top_k_accuracy,
    true_ranks,
)
from megaclass.evaluate.verification import auc


def _nan(x):
    return np.nan if x is None else x


@pytest.mark.parametrize("seed", range(6))
def test_precision_recall_f1_match_sklearn(seed):
    rng = np.random.default_rng(seed)
    n, c = 60, 9
    y = rng.integers(0, c, n)
    p = np.where(rng.random(n) < 0.5, y, rng.integers(0, c + 2, n))  # some classes only predicted
    labels = sorted(set(y) | set(p))
    r = classification_report(list(y), list(p))
    assert r.classes == labels
    sp, sr, sf, ss = skm.precision_recall_fscore_support(y, p, labels=labels, zero_division=np.nan)
    np.testing.assert_allclose(r.precision, sp, equal_nan=True)
    np.testing.assert_allclose(r.recall, sr, equal_nan=True)
    np.testing.assert_allclose(r.f1, sf, equal_nan=True)
    np.testing.assert_array_equal(r.support, ss)
    for avg in ("macro", "micro", "weighted"):
        ep, er, ef, _ = skm.precision_recall_fscore_support(y, p, labels=labels, average=avg,
                                                            zero_division=np.nan)
        got = getattr(r, avg)
        np.testing.assert_allclose([_nan(got["precision"]), _nan(got["recall"]), _nan(got["f1"])],
                                   [ep, er, ef], equal_nan=True, err_msg=avg)


def test_no_prediction_counts_as_a_miss_like_an_unlisted_label():
    y = ["a", "b", "b", "c", "c"]
    p = ["a", None, "b", "a", None]
    r = classification_report(y, p)
    sk = skm.precision_recall_fscore_support(y, [x or "<none>" for x in p], labels=["a", "b", "c"],
                                             zero_division=np.nan)
    np.testing.assert_allclose(r.precision, sk[0], equal_nan=True)
    np.testing.assert_allclose(r.recall, sk[1], equal_nan=True)
    # class c never predicted: precision undefined (None), not 0
    assert r.to_dict(per_class=True)["per_class"][2]["precision"] is None
    assert r.undefined["precision"] == 1


def test_top_k_matches_sklearn():
    rng = np.random.default_rng(3)
    n, c = 80, 12
    scores = rng.normal(size=(n, c))
    y = rng.integers(0, c, n)
    order = np.argsort(-scores, axis=1)
    cands = [[str(j) for j in row] for row in order]
    ours = top_k_accuracy(cands, [str(t) for t in y], ks=(1, 3, 5))
    for k in (1, 3, 5):
        assert ours[f"top{k}"] == pytest.approx(skm.top_k_accuracy_score(y, scores, k=k, labels=range(c)))
    ranks = true_ranks(cands, [str(t) for t in y])
    assert cmc_curve(ranks, 5)[[0, 2, 4]] == pytest.approx([ours["top1"], ours["top3"], ours["top5"]])
    assert rank1_miss_rate(ranks) == pytest.approx(1 - ours["top1"])


def test_sparse_confusion_matches_dense_matrix():
    rng = np.random.default_rng(4)
    y = rng.integers(0, 6, 200)
    p = np.where(rng.random(200) < 0.6, y, rng.integers(0, 6, 200))
    dense = skm.confusion_matrix(y, p, labels=range(6))
    sparse = confusion_counts(list(y), list(p), labels=range(6))
    for (t, q), v in sparse.items():
        assert dense[t, q] == v
    assert sum(sparse.values()) == dense.sum()
    top = top_confusions(list(y), list(p), n=3, examples=2)
    off = dense.copy()
    np.fill_diagonal(off, 0)
    assert top[0]["count"] == off.max()
    t0, p0 = top[0]["true"], top[0]["predicted"]
    assert all(y[i] == t0 and p[i] == p0 for i in top[0]["examples"])
    assert [x["count"] for x in top] == sorted([x["count"] for x in top], reverse=True)


def test_roc_and_auc_match_sklearn():
    rng = np.random.default_rng(5)
    g = np.round(rng.normal(1, 1, 300), 2)  # rounding makes ties
    i = np.round(rng.normal(0, 1, 500), 2)
    ours = roc_curve(g, i)
    y = np.r_[np.ones_like(g), np.zeros_like(i)]
    fpr, tpr, thr = skm.roc_curve(y, np.r_[g, i], drop_intermediate=False)
    np.testing.assert_allclose(ours["far"], fpr)
    np.testing.assert_allclose(ours["tar"], tpr)
    np.testing.assert_allclose(ours["threshold"][1:], thr[1:])
    assert auc(ours["far"], ours["tar"]) == pytest.approx(skm.roc_auc_score(y, np.r_[g, i]))


def test_tar_at_far_and_eer_by_hand():
    g = [0.9, 0.8, 0.7, 0.4]
    i = [0.1, 0.2, 0.3, 0.5, 0.75, 0.05, 0.0, -0.1, -0.2, -0.3]
    r = tar_at_far(g, i, fars=(0.1, 0.01))
    # FAR 0.1 allows 1 of 10 impostors: threshold just above 0.5 -> genuine 0.9, 0.8, 0.7 accepted
    assert r[0]["tar"] == 0.75 and r[0]["achieved_far"] == 0.1
    assert r[1]["tar"] is None and "100 impostor pairs" in r[1]["reason"]
    assert eer([0.9, 0.8, 0.4], [0.1, 0.5, 0.2])["eer"] == pytest.approx(1 / 3)


def test_fnir_fpir_ties_at_threshold_and_no_candidates():
    # scores equal to the threshold pass (>=), both for mated hits and non-mated searches
    nm = [0.5, 0.5, 0.2, float("-inf")]  # last non-mated search had no candidate at all
    assert fpir(nm, 0.5) == 0.5
    assert fpir(nm, 0.50001) == 0.0
    mated = [0.5, 0.7, float("-inf"), 0.6]
    correct = [True, True, False, False]  # no candidate -> miss; wrong rank-1 -> miss
    assert fnir(mated, correct, 0.5) == 0.5
    assert fnir(mated, correct, 0.6) == 0.75
    curve = det_curve(mated, correct, nm)
    assert np.isfinite(curve["threshold"]).all()
    k = list(curve["threshold"]).index(0.5)
    assert curve["fpir"][k] == 0.5 and curve["fnir"][k] == 0.5


def test_fnir_at_fpirs_undefined_is_explicit():
    r = fnir_at_fpirs([0.9, 0.3], [True, True], [0.1, 0.6, 0.2, 0.4], targets=(0.25, 0.01))
    assert r[0]["fnir"] == 0.5 and r[0]["fpir"] == 0.25
    assert r[1]["fnir"] is None and "100 non-mated" in r[1]["reason"]
    none = fnir_at_fpirs([0.9], [True], [], targets=(0.1,))
    assert none[0]["fnir"] is None and "no non-mated" in none[0]["reason"]


def test_accuracy_by_frequency_buckets():
    y = ["a", "a", "b", "c"]
    p = ["a", "b", "b", None]
    out = accuracy_by_frequency(y, p, {"a": 1, "b": 7, "c": 30}, edges=(1, 5, 20, 100))
    assert [o["queries"] for o in out] == [2, 1, 1, 0]
    assert out[0]["accuracy"] == 0.5 and out[2]["accuracy"] == 0.0 and out[3]["accuracy"] is None


def test_bad_input_raises():
    with pytest.raises(InvalidInputError, match="predictions"):
        classification_report(["a"], ["a", "b"])
    with pytest.raises(InvalidInputError, match="at least one"):
        classification_report([], [])
    with pytest.raises(InvalidInputError, match="NaN"):
        tar_at_far([0.1, float("nan")], [0.2])
    with pytest.raises(InvalidInputError, match="one flag"):
        fnir([0.1, 0.2], [True], 0.5)
    with pytest.raises(InvalidInputError, match="no frequency"):
        accuracy_by_frequency(["z"], ["z"], {"a": 1})
    with pytest.raises(InvalidInputError, match="at least one"):
        cmc_curve([])
