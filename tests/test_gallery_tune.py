"""``Gallery.tune(queries)`` / ``megaclass gallery tune``: search knobs fitted to real probes."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from megaclass import cli
from megaclass.errors import DimensionMismatchError, InvalidInputError, ReadOnlyGalleryError
from megaclass.gallery import Gallery

DIM = 32
N_CLASSES, PER = 600, 2


def _unit(x):
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(3)
    centres = _unit(rng.normal(size=(N_CLASSES, DIM)))
    tpl = _unit(np.repeat(centres, PER, axis=0) + rng.normal(scale=0.15, size=(N_CLASSES * PER, DIM)))
    # hard probes: much noisier than the templates (what "auto"'s synthetic probes are not)
    probes = _unit(centres[rng.integers(0, N_CLASSES, 400)] + rng.normal(scale=0.3, size=(400, DIM)))
    truth = np.repeat(np.arange(N_CLASSES), PER)[(probes @ tpl.T).argmax(axis=1)]
    return tpl, probes, truth


def _gallery(path, tpl, index="IVF16,PQ8x4fs,RFlat"):
    g = Gallery.open(path, dim=DIM, index=index)
    g.enroll_many((f"c{i}", tpl[i * PER:(i + 1) * PER]) for i in range(N_CLASSES))
    assert g.wait_for_index(timeout=120)
    return g


def _recall(g, probes, truth) -> float:
    best = [int(m[0].label[1:]) for m in g.search(probes, k=1)]
    return float(np.mean(np.array(best) == truth))


def test_tune_reaches_the_target_on_the_given_probes_and_is_saved(tmp_path, data):
    tpl, probes, truth = data
    g = _gallery(tmp_path / "g", tpl)
    assert g.stats()["index"] == "IVF16,PQ8x4fs,RFlat"
    g.state.index.set_knobs(nprobe=1)  # a knob far too small for these probes
    assert _recall(g, probes, truth) < 0.99
    out = g.tune(probes)
    assert out["tuned_by"] == "queries" and out["recall_queries"] == len(probes)
    assert out["recall_at_1"] >= 0.99 and out["nprobe"] > 1
    assert _recall(g, probes, truth) >= 0.99  # measured independently of tune's own report
    g.close()
    with Gallery.open(tmp_path / "g") as again:  # the knobs travel with the snapshot
        st = again.stats()
        assert (st["nprobe"], st["k_factor"], st["tuned_by"]) == (out["nprobe"], out["k_factor"], "queries")


def test_a_search_for_one_class_re_ranks_k_factor_candidates_whatever_the_templates_per_class(tmp_path, data):
    """With 2 templates per class a k=1 search fetches 2 neighbours; it re-ranks
    k_factor + 1 candidates (one per extra neighbour), not 2 x k_factor: the depth at
    which leave-one-out tuning measures (the left-out template is the extra one). Checked
    against FAISS searched directly for one neighbour at k_factor + 1."""
    from megaclass.gallery.faiss_api import ivf_params, refine_params

    tpl, probes, _ = data
    with _gallery(tmp_path / "g", tpl) as g:
        ci = g.state.index
        ci.set_knobs(nprobe=2, k_factor=3)  # shallow, so the depth decides many answers
        ours = np.array([c[0] for c, _ in ci.search(probes, 1)])

        def faiss_best(k_factor):
            base = ivf_params(2)
            _, ids = ci.index.search(probes, 1, params=refine_params(k_factor, base, keep=base))
            return ci.class_map.classes_of(ids)[:, 0]

        assert np.array_equal(ours, faiss_best(4))
        assert not np.array_equal(ours, faiss_best(6))  # the old depth (2 x 3) answers differently


def test_searches_reuse_their_parameters_until_the_knobs_change(tmp_path, data):
    """Unfiltered searches keep their FAISS parameters per (wanted, fetched); setting the
    knobs drops them, so the next search runs at the new depth (answers as FAISS's own)."""
    from megaclass.gallery.faiss_api import ivf_params, refine_params

    tpl, probes, _ = data
    with _gallery(tmp_path / "g", tpl) as g:
        ci = g.state.index
        ci.set_knobs(nprobe=2, k_factor=3)
        first = [c[0] for c, _ in ci.search(probes, 1)]
        cached = dict(ci.search_params)
        assert cached and [c[0] for c, _ in ci.search(probes, 1)] == first
        assert all(ci.search_params[key] is p for key, p in cached.items())  # reused, not rebuilt
        ci.set_knobs(nprobe=8, k_factor=40)
        assert not ci.search_params
        ours = np.array([c[0] for c, _ in ci.search(probes, 1)])
        base = ivf_params(8)
        _, ids = ci.index.search(probes, 1, params=refine_params(41, base, keep=base))
        assert np.array_equal(ours, ci.class_map.classes_of(ids)[:, 0])
        assert not np.array_equal(ours, np.array(first))  # the knobs changed the answers


def test_tune_refuses_bad_probes_and_changes_nothing(tmp_path, data):
    tpl, probes, _ = data
    with _gallery(tmp_path / "g", tpl) as g:
        before = g.stats()
        with pytest.raises(InvalidInputError, match="100 to 100,000"):
            g.tune(probes[:50])
        with pytest.raises(DimensionMismatchError):
            g.tune(probes[:, :16])
        nan = probes.copy()
        nan[7, 3] = np.nan
        with pytest.raises(InvalidInputError):
            g.tune(nan)
        assert g.stats() == before


def test_tune_of_an_exact_index_has_nothing_to_fit(tmp_path, data):
    tpl, probes, _ = data
    with _gallery(tmp_path / "g", tpl, index="Flat") as g:
        out = g.tune(probes)
    assert out["index"] == "Flat" and out["recall_at_1"] == 1.0 and out["tuned_by"] == "exact"


def test_tune_needs_a_writable_gallery(tmp_path, data):
    tpl, probes, _ = data
    _gallery(tmp_path / "g", tpl).close()
    with Gallery.open(tmp_path / "g", read_only=True) as ro, \
            pytest.raises(ReadOnlyGalleryError, match="read-only"):
        ro.tune(probes)


def test_cli_gallery_tune(tmp_path, data):
    tpl, probes, truth = data
    _gallery(tmp_path / "g", tpl).close()
    np.save(tmp_path / "probes.npy", probes)
    cli._register_area_commands()
    runner = CliRunner()
    r = runner.invoke(cli.app, ["gallery", "tune", "-g", str(tmp_path / "g"), str(tmp_path / "probes.npy"),
                                "--json"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.output)
    assert out["recall_at_1"] >= 0.99 and out["tuned_by"] == "queries"
    with Gallery.open(tmp_path / "g") as g:
        assert _recall(g, probes, truth) >= 0.99
    (tmp_path / "bad.npy").write_bytes(b"not an array")
    r = runner.invoke(cli.app, ["gallery", "tune", "-g", str(tmp_path / "g"), str(tmp_path / "bad.npy")])
    assert r.exit_code != 0 and "not a readable .npy array" in str(r.exception)
