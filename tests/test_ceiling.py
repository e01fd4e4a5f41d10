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
