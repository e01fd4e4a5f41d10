"""Bounded-memory accumulators agree with the exact array metrics to within one bin."""

import numpy as np
import pytest

from megaclass.evaluate import cmc_curve, fnir_at_fpirs, tar_at_far
from megaclass.evaluate.streaming import IdentificationStream, ScoreHistogram, VerificationStream


def test_identification_stream_matches_exact_in_chunks():
    rng = np.random.default_rng(0)
    ranks = rng.choice([0, 1, 1, 1, 2, 3, 7], size=5000)
    scores = np.clip(np.where(ranks == 1, rng.normal(0.7, 0.1, 5000), rng.normal(0.4, 0.1, 5000)), -1, 1)
    nm = np.clip(rng.normal(0.35, 0.1, 4000), -1, 1)
    acc = IdentificationStream(max_rank=10)
    for a in range(0, 5000, 700):  # chunked, like a stream
        acc.add_mated(ranks[a:a + 700], scores[a:a + 700])
    for a in range(0, 4000, 900):
        acc.add_non_mated(nm[a:a + 900])
    np.testing.assert_allclose(acc.cmc(), cmc_curve(ranks, 10))
    exact = fnir_at_fpirs(scores, ranks == 1, nm, targets=(0.1, 0.01))
    for t, e in zip((0.1, 0.01), exact, strict=True):
        s = acc.fnir_at_fpir(t)
        assert s["fpir"] <= t
        assert abs(s["threshold"] - e["threshold"]) <= 2 * acc.hits.width + 1e-9
        # moving the threshold by one bin changes FNIR by at most the mass in that bin
        assert s["fnir"] == pytest.approx(e["fnir"], abs=0.01)
    assert acc.fnir_at_fpir(1e-4)["fnir"] is None


def test_verification_stream_and_memory_is_fixed():
    rng = np.random.default_rng(1)
    v = VerificationStream()
    g = np.clip(rng.normal(0.6, 0.15, 20_000), -1, 1)
    i = np.clip(rng.normal(0.0, 0.15, 200_000), -1, 1)
    size0 = v.impostor.counts.nbytes
    for a in range(0, 200_000, 50_000):
        v.add(g[a // 10:(a + 50_000) // 10], i[a:a + 50_000])
    assert v.impostor.counts.nbytes == size0
    exact = tar_at_far(g, i, fars=(1e-2, 1e-4, 1e-6))
    assert v.tar_at_far(1e-2)["tar"] == pytest.approx(exact[0]["tar"], abs=2e-3)
    assert v.tar_at_far(1e-4)["tar"] == pytest.approx(exact[1]["tar"], abs=5e-3)
    assert v.tar_at_far(1e-6)["tar"] is None and exact[2]["tar"] is None
    assert 0 < v.eer() < 0.1


def test_histogram_counts_no_candidate_apart():
    h = ScoreHistogram(bins=10)
    h.add([float("-inf"), 0.05, 0.95, 1.0])
    assert h.n == 4 and h.none == 1
    assert h.at_least()[-1] == 2  # 0.95 and 1.0 (clamped into the last bin)
