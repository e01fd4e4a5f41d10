"""The glyph collision study: finds a class that collides with itself, and turns counts into a ceiling."""

import math

from megaclass.evaluate.ceiling import collision_pairs, collision_study
from megaclass.models import Encoder, EncoderConfig


def test_a_class_enrolled_twice_is_found_as_a_collision_and_the_ceiling_follows():
    enc = Encoder(EncoderConfig(dim=16, widths=(8, 16))).eval()
    # queries 1000..1009 are also candidates (all judged, k=60): each must collide with itself
    r = collision_study(enc, candidates=60, queries=10, k=60, drawings=6, candidate_start=1000,
                        query_start=1000, gallery_sizes=(10, 1000))
    selves = {(p["query"], p["candidate"]) for p in r["pairs"] if p["query"] == p["candidate"]}
    assert len(selves) == 10
    assert r["p_pair"] == r["collisions"] / (10 * 60) and r["collisions"] >= 10
    assert math.isclose(r["class_entropy_bits"], math.log2(1 / r["p_pair"]))
    small, large = r["ceiling"]["10"], r["ceiling"]["1000"]
    assert 0.5 <= large["rank1_ceiling"] < small["rank1_ceiling"] <= 1
    assert large["rank1_ceiling_pessimistic"] <= large["rank1_ceiling"]
    assert len(collision_pairs(r, limit=4)) == 4


def test_rank1_by_group_splits_queries_by_stroke_count_and_caches_the_gallery(tmp_path):
    from megaclass.data.glyph_attributes import glyph_attributes
    from megaclass.evaluate.ceiling import rank1_by_group

    enc = Encoder(EncoderConfig(dim=16, widths=(8, 16))).eval()
    r = rank1_by_group(enc, sizes=(20, 200), queries=40, start=5000, cache=tmp_path)
    strokes = [a["strokes"] for a in glyph_attributes(range(5000, 5040))]
    assert r["group_share"] == {g: strokes.count(g) / 40 for g in set(strokes)}
    small, large = r["sizes"]["20"], r["sizes"]["200"]
    assert set(large) == {"all", *set(strokes)}
    assert all(0 <= v <= 1 for v in (*small.values(), *large.values()))
    # the groups add up to the whole; a gallery smaller than the query set is searched by
    # its own 20 classes only (a multiple of 1/20, not of 1/40)
    assert abs(sum(r["group_share"][g] * large[g] for g in r["group_share"]) - large["all"]) < 1e-9
    assert abs(small["all"] * 20 - round(small["all"] * 20)) < 1e-9
    cached = list(tmp_path.glob("templates_*.npy"))
    assert len(cached) == 1 and rank1_by_group(enc, sizes=(200,), queries=40, start=5000,
                                               cache=tmp_path)["sizes"]["200"] == large
