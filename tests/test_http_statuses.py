"""Distinct errors get distinct HTTP statuses (issue 16 part 4): a model mismatch is a
conflict (409), a closed gallery or a busy store is unavailable for now (503)."""

from __future__ import annotations

import pytest

from megaclass.errors import (
    ConfigError,
    GalleryClosedError,
    MegaclassError,
    ModelMismatchError,
    PayloadTooLargeError,
    StoreBusyError,
)
from megaclass.serve.http_errors import status_of


@pytest.mark.parametrize("exc, status", [(ModelMismatchError("m"), 409), (GalleryClosedError("c"), 503),
                                         (StoreBusyError("b"), 503), (ConfigError("x"), 422),
                                         (PayloadTooLargeError("p"), 413), (MegaclassError("e"), 400)])
def test_status_of(exc, status):
    assert status_of(exc) == status


def test_a_busy_store_is_a_typed_error(tmp_path):
    import sqlite3

    from megaclass.gallery import Gallery

    with Gallery.open(tmp_path / "g", dim=4) as g:
        other = sqlite3.connect(tmp_path / "g" / "gallery.db", isolation_level=None, timeout=0)
        other.execute("BEGIN IMMEDIATE")  # another process holds the write lock
        g.state.store.connection.execute("PRAGMA busy_timeout = 50")
        try:
            with pytest.raises(StoreBusyError, match="busy"):
                g.enroll("a", [1.0, 0, 0, 0])
        finally:
            other.execute("ROLLBACK")
            other.close()
        assert g.enroll("a", [1.0, 0, 0, 0]) == 1
