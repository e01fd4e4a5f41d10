"""The tests' Milvus server helper lives in the package (benchmarks use it too)."""

from megaclass.gallery.milvus.standalone import MilvusProcess, free_port


def running(base, **config):
    """A fixture's body: a ``MilvusProcess(base, **config)`` started, yielded, then stopped
    (``yield from running(...)``)."""
    server = MilvusProcess(base, **config)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def drop_gallery(g) -> None:
    """Drop an open Milvus gallery's two collections (a test's cleanup): every collection
    left loaded on a server is reloaded after each restart, and holds its memory."""
    for name in (g.name, g.meta_name):
        g.link.client.drop_collection(name)


__all__ = ["MilvusProcess", "drop_gallery", "free_port", "running"]
