"""LabelTable: the compact class id -> label map a gallery keeps in memory."""

import pytest

from megaclass.gallery.labels import LabelTable


def test_labels_round_trip_in_id_order_with_gaps_and_unicode():
    t = LabelTable.from_chunks([[(1, "alice"), (7, "Zoë ✓")], [(3, "bob")]])
    assert len(t) == 3
    assert (t.get(1), t.get(3), t.get(7)) == ("alice", "bob", "Zoë ✓")
    assert t.labels() == ["alice", "bob", "Zoë ✓"]  # class id order, not insertion order
    for missing in (0, 2, 8, 10_000, -1):
        with pytest.raises(KeyError):
            t.get(missing)


def test_update_grows_keeps_existing_labels_and_remove_blanks_bytes():
    t = LabelTable()
    t.update(list(range(1, 3001)), [f"c{i}" for i in range(1, 3001)])  # past the initial 1024 slots
    t.update([5, 3001], ["renamed?", "new"])  # an existing class keeps its label (replace=True)
    assert len(t) == 3001 and t.get(5) == "c5" and t.get(3001) == "new"
    before = t.memory_bytes()
    t.remove([5, 5, 99999])  # twice and unknown: no error, counted once
    assert len(t) == 3000
    with pytest.raises(KeyError):
        t.get(5)
    assert b"c5c6" not in bytes(t._buf) and b"\x00\x00c6" in bytes(t._buf)  # erased bytes zeroed
    assert t.memory_bytes() == before
    assert "c5" not in t.labels() and t.labels()[:3] == ["c1", "c2", "c3"]
