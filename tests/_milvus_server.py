"""The tests' Milvus server helper lives in the package (benchmarks use it too)."""

from megaclass.gallery.milvus.standalone import MilvusProcess, free_port

__all__ = ["MilvusProcess", "free_port"]
