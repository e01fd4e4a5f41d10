"""Recall that holds on real queries: leave-one-out / calibrated tuning probes with their
95 % interval, the live recall monitor that re-tunes, and the opt-in query reservoir."""

from __future__ import annotations

import numpy as np
import pytest

from megaclass.errors import ConfigError, EncryptionKeyError, InvalidInputError
from megaclass.gallery import Gallery
from megaclass.gallery.crypto import generate_key
from megaclass.gallery.probes import min_probes, wilson
from megaclass.gallery.reservoir import FILE_NAME, QueryReservoir

DIM = 32
N = 1500
SPEC = "IVF32,PQ8x4fs,RFlat"


def _unit(x):
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


@pytest.fixture(scope="module")
def data():
    """Classes in tight groups of near neighbours (real embeddings' near-ties), 2 templates each,
    and queries drawn towards a rival (the hard case isotropic probes never produce)."""
    rng = np.random.default_rng(7)
    groups = _unit(rng.normal(size=(N // 5, DIM)))
    centres = _unit(np.repeat(groups, 5, axis=0) + rng.normal(scale=0.12, size=(N, DIM)))
    tpl = _unit(np.repeat(centres, 2, axis=0) + rng.normal(scale=0.08, size=(2 * N, DIM)))
    cls = rng.integers(0, N, 1200)
    queries = _unit(centres[cls] + rng.normal(scale=0.12, size=(1200, DIM)))
    return tpl, queries


def _gallery(path, tpl, per=2, key=None):
    g = Gallery.open(path, dim=DIM, index=SPEC, key=key)
    g.background_maintenance = False
    g.enroll_many((f"c{i}", tpl[i * 2: i * 2 + per]) for i in range(N))
    return g


def test_wilson_and_min_probes():
    lo, hi = wilson(990, 1000)
    assert lo < 0.99 < hi and hi - lo < 0.02
    assert wilson(0, 0) == (0.0, 1.0) and min_probes(0.99) == 100 and min_probes(0.999) == 1000


def test_two_templates_per_class_tune_on_leave_one_out_probes(tmp_path, data):
    tpl, _ = data
    with _gallery(tmp_path / "g", tpl) as g:
        st = g.stats()
    assert st["index"] == SPEC and st["tuned_by"] == "leave-one-out"
    assert st["recall_queries"] == 2000 and st["recall_at_1"] >= 0.99
    lo, hi = st["recall_ci95"]
    assert lo <= st["recall_at_1"] <= hi and hi - lo < 0.02


def test_one_template_per_class_tunes_on_calibrated_probes_then_on_observed_searches(tmp_path, data):
    tpl, queries = data
    with _gallery(tmp_path / "g", tpl, per=1) as g:
        st = g.stats()
        assert st["tuned_by"] == "calibrated" and st["calibrated_to"] == "prior"
        assert st["recall_at_1"] >= 0.99
        g.monitor_recall(rate=1.0)
        g._recall.interval, g._recall.batch = 0.0, 600
        g.search(queries[:600], k=1)  # 600 observed searches: the prior gives way to them
        st = g.stats()
        assert st["calibrated_to"] == "600 observed searches" and st["recall_at_1"] >= 0.99
        right = [m[0].label for m in g.search(queries[600:], k=1)]
        exact = np.array([int(lab[1:]) for lab in right])
    truth = ((queries[600:] @ tpl[0::2].T).argmax(axis=1))
    assert np.mean(exact == truth) >= 0.98


def test_live_monitor_detects_knobs_too_low_and_retunes(tmp_path, data):
    tpl, queries = data
    with _gallery(tmp_path / "g", tpl) as g:
        g.monitor_recall(rate=1.0)
        g._recall.interval, g._recall.batch = 0.0, 100
        g.state.index.set_knobs(nprobe=1, k_factor=1)  # deliberately far too low
        for a in range(0, 600, 100):
            g.search(queries[a:a + 100], k=1)  # live traffic
        log = [e for e in g.maintenance_log if e.get("event") == "retune"]
        assert len(log) == 1 and "below the target 0.99" in log[0]["why"]
        assert g.stats()["nprobe"] > 1 and g.stats()["recall_at_1"] >= 0.99
        st = g.stats()
    assert st["live_recall_monitor"] == "on" and 0 <= st["live_recall_samples"] <= 600


def test_monitor_off_samples_nothing_and_exact_reports_one(tmp_path, data):
    tpl, queries = data
    with _gallery(tmp_path / "g", tpl) as g:
        g.monitor_recall(False)
        g.search(queries, k=1)
        assert g.stats()["live_recall_samples"] == 0 and g.stats()["live_recall_monitor"] == "off"
        with pytest.raises(ConfigError, match="rate"):
            g.monitor_recall(rate=2.0)
    with Gallery.open(tmp_path / "flat", dim=DIM, index="Flat") as g:
        g.enroll("a", tpl[:2])
        g.search(queries, k=1)
        st = g.stats()
    assert st["live_recall_at_1"] == 1.0 and st["live_recall_samples"] == 0


def test_reservoir_is_opt_in_sealed_bounded_used_by_tune_and_dropped(tmp_path, data):
    tpl, queries = data
    key = generate_key()
    path = tmp_path / "g"
    with _gallery(path, tpl, key=key) as g:
        g.search(queries[:50], k=1)
        assert not (path / FILE_NAME).exists()  # off by default
        g.keep_queries(1000)
        g.search(queries, k=3)
        assert g.stats()["query_reservoir"] == {"capacity": 1000, "kept": 1000}
    raw = (path / FILE_NAME).read_bytes()
    assert queries[-1].tobytes()[:16] not in raw  # sealed, not in clear
    with pytest.raises(EncryptionKeyError):  # the file cannot be read without the key
        QueryReservoir(path, DIM, 1000, cipher=None, gallery_uuid="x", encrypted=False)
    with pytest.raises(EncryptionKeyError):  # nor kept on an encrypted gallery without it
        QueryReservoir(tmp_path, DIM, 300, cipher=None, gallery_uuid="x", encrypted=True)
    with Gallery.open(path, key=key) as g:
        out = g.tune()
        assert out["tuned_by"] == "reservoir" and out["recall_queries"] == 1000
        assert all(not isinstance(v, np.ndarray) for v in g.stats().values())
        g.drop_queries()
        assert not (path / FILE_NAME).exists() and "query_reservoir" not in g.stats()
        assert g.tune()["tuned_by"] == "leave-one-out"
        with pytest.raises(ConfigError, match="capacity"):
            g.keep_queries(0)
        with pytest.raises(ConfigError, match="reserved"):  # only through keep_queries
            g.set_setting("query_reservoir", 5)


def test_tune_with_too_few_probes_says_how_many(tmp_path, data):
    tpl, queries = data
    with _gallery(tmp_path / "g", tpl) as g, pytest.raises(InvalidInputError, match="100"):
        g.tune(queries[:20])


def test_live_recall_is_exported_to_metrics(tmp_path, data, tiny_encoder):
    """/metrics shows the tuned recall and the live recall of served queries (issue 20 part 4)."""
    from fastapi.testclient import TestClient

    from megaclass.serve import create_app
    from megaclass.serve.metrics import Metrics, gallery_gauges

    tpl, queries = data
    with _gallery(tmp_path / "g", tpl) as g:
        before = Metrics().render(gallery_gauges(g))
        assert "megaclass_gallery_recall_at_1 0.99" in before  # tuned, on leave-one-out probes
        assert "megaclass_gallery_live_recall_at_1" not in before  # nothing sampled yet
        g.monitor_recall(rate=1.0)
        g._recall.interval, g._recall.batch = 0.0, 200
        g.search(queries[:200], k=1)  # served queries, each re-run exactly
        gauges = gallery_gauges(g)
        text = Metrics().render(gauges)
    assert gauges["live_recall_samples"] == 200
    def gauge(name):
        return float(next(line.split()[1] for line in text.splitlines() if line.startswith(name + " ")))

    live = gauge("megaclass_gallery_live_recall_at_1")
    assert live == pytest.approx(gauges["live_recall_at_1"]) and live > 0.9
    lo = gauge("megaclass_gallery_live_recall_ci95_lower")
    hi = gauge("megaclass_gallery_live_recall_ci95_upper")
    assert lo <= live <= hi
    with TestClient(create_app(tiny_encoder, tmp_path / "g")) as client:  # the route serves them
        served = client.get("/metrics").text
    assert "megaclass_gallery_recall_at_1 " in served and "megaclass_gallery_templates 3000" in served
