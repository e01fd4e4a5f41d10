import json

import numpy as np

from megaclass.bench.gallery import GalleryBenchConfig, run_bench


def test_gallery_bench_tiny(tmp_path):
    cfg = GalleryBenchConfig(classes=300, dim=16, queries=50, non_mated=10, single=10, data="random")
    report = run_bench(cfg, tmp_path, systems=("megaclass", "faiss", "numpy"), log=lambda *a: None)
    saved = json.loads((tmp_path / "gallery_bench.json").read_text())
    assert saved["results"].keys() == report["results"].keys() == {"megaclass", "faiss", "numpy"}
    for name, r in saved["results"].items():
        assert "skipped" not in r, (name, r)
        assert r["recall_at_1"] >= 0.99 and r["p50_ms"] > 0 and r["batch_qps"] > 0
    assert saved["results"]["megaclass"]["durable"] is True
    assert (tmp_path / "gallery_bench.png").read_bytes()[:4] == b"\x89PNG"


def test_a_system_over_its_time_budget_is_reported_not_waited_for(tmp_path):
    cfg = GalleryBenchConfig(classes=300, dim=16, queries=50, non_mated=10, single=10, timeout=0.05,
                             data="random")
    report = run_bench(cfg, tmp_path, systems=("megaclass",), log=lambda *a: None)
    assert report["results"]["megaclass"]["skipped"].startswith("timed out after")


def test_gallery_bench_on_embeddings_reports_accuracy_and_caches_them(tmp_path, tiny_model_dir):
    """The default data: glyph classes embedded by a model, cached (memory-mapped) for the next run."""
    cfg = GalleryBenchConfig(classes=200, queries=40, non_mated=10, single=5, model=str(tiny_model_dir),
                             cache=str(tmp_path / "cache"))
    report = run_bench(cfg, tmp_path / "out", systems=("megaclass", "numpy"), log=lambda *a: None)
    assert report["config"]["dim"] == 32 and report["data"]["model"] == str(tiny_model_dir)
    for r in report["results"].values():
        assert r["recall_at_1"] == 1.0 and 0 <= r["accuracy"] <= 1
        assert r["accuracy"] == r["exact_accuracy"]  # exact search: the same answers
    assert report["results"]["megaclass"]["recall_reported"] == 1.0
    cached = list((tmp_path / "cache").glob("emb-*/templates.npy"))
    assert len(cached) == 1 and np.load(cached[0], mmap_mode="r").shape == (400, 32)


def test_the_default_model_is_the_shipped_benchmark_encoder(tmp_path):
    """No --model: the shipped reference-v1 the recorded numbers used; a shipped name: that model."""
    from megaclass.bench.gallery_data import resolve_model
    from megaclass.models.pretrained import shipped_dir

    assert resolve_model(None, tmp_path) == shipped_dir("reference-v1")
    for asked in ("reference", "reference-v1"):
        assert resolve_model(asked, tmp_path) == shipped_dir(asked)
    assert not (tmp_path / "model").exists()  # nothing trained


def test_tuning_raises_the_rerank_depth_and_restarts_the_probe_search():
    """4-bit codes too coarse: k_factor goes up, and nprobe is searched again from the start
    (the benchmark fits knobs with the gallery's own fit_knobs, through gallery_measure.fit)."""
    from types import SimpleNamespace

    from megaclass.bench.gallery_measure import fit, k_factors_from

    state = {"nprobe": 0, "k_factor": 8}
    tried = []

    def set_knobs(nprobe, k_factor):
        state.update(nprobe=nprobe, k_factor=k_factor)
        tried.append((nprobe, k_factor))

    def search_cls(_queries):  # 0.99 needs k_factor >= 32 and nprobe >= 300
        ok = state["k_factor"] >= 32 and state["nprobe"] >= 300
        return np.where(np.arange(100) < (100 if ok else 90), 0, 1)

    data = SimpleNamespace(mated=np.zeros((100, 4), np.float32), truth=np.zeros(100, dtype=int))
    nprobe, k_factor, recall = fit(set_knobs, search_cls, data, 16, 4096, k_factors_from(8))
    assert recall == 1.0 and k_factor == 32 and 300 <= nprobe <= 320
    assert (16, 32) in tried                                 # nprobe searched again from the start
    assert state == {"nprobe": nprobe, "k_factor": 32}       # left at the choice


def test_a_timed_out_peer_says_how_far_it_got():
    from megaclass.bench.gallery import _how_far

    partial = '{"built": 400, "of": 1000, "seconds": 2.0}\n'
    assert _how_far(partial) == "; had built 400 of 1,000 in 2 s (200 templates/s)"
    done = partial + '{"built": 1000, "of": 1000, "seconds": 4.0}\n'
    assert _how_far(done) == "; built all 1,000 in 4 s (250 templates/s), then ran out of time"
    assert _how_far("no progress lines") == ""


def test_megaclass_milvus_runs_beside_the_local_gallery(tmp_path, milvus_server, monkeypatch):
    """``--system megaclass-milvus``: the Milvus gallery on the session's real server (HNSW
    forced so that its ``ef`` is fitted like every other system's knob)."""
    monkeypatch.setenv("MEGACLASS_BENCH_MILVUS_URI", milvus_server.uri_base)
    monkeypatch.setenv("MEGACLASS_BENCH_MILVUS_INDEX", "HNSW")
    monkeypatch.setenv("MEGACLASS_BENCH_MILVUS_SINGLE", "5")  # ~1 s each on a loaded box
    cfg = GalleryBenchConfig(classes=300, dim=16, queries=50, non_mated=10, single=10, data="random")
    report = run_bench(cfg, tmp_path, systems=("megaclass", "megaclass-milvus"), log=lambda *a: None)
    r = report["results"]["megaclass-milvus"]
    assert "skipped" not in r, r
    assert r["index"] == "milvus:HNSW" and r["recall_at_1"] >= 0.99 and "ef" in r["knob"]
    assert r["durable"] is True and r["p50_ms"] > 0 and r["single_enroll_per_s"] > 0
    assert 0 <= r["accuracy"] <= 1


def test_one_template_per_class_reports_the_gallery_after_its_monitor_recalibrated(tmp_path):
    """Tuned on the near-tie prior (one template per class, no leave-one-out), the gallery is
    then shown after its live monitor observed half the queries: re-tuned on probes
    calibrated to those searches, measured on the other half."""
    cfg = GalleryBenchConfig(classes=4000, dim=16, templates=1, queries=1000, non_mated=10, single=10,
                             data="random", index="IVF32,PQ8x4fs,RFlat")
    report = run_bench(cfg, tmp_path, systems=("megaclass",), log=lambda *a: None)
    r = report["results"]["megaclass"]
    assert r["tuned_by"] == "calibrated" and r["calibrated_to"] == "prior", r
    after = r["after_observed"]
    seen, words = after["calibrated_to"].split(" ", 1)
    assert words == "observed searches" and int(seen) >= 500
    assert after["held_out_queries"] == 500 and after["recall_held_out"] >= 0.98
    assert after["recall_reported"] >= 0.99 and after["p50_ms"] > 0 and after["own_knobs"]["nprobe"] >= 1
