"""HTTP service: a thin FastAPI layer over :class:`~megaclass.recognizer.Recognizer`.

Routers per resource (``routers/``), API keys with roles (``keys.py``), an audit log
(``audit.py``) and request limits (``limits.py``) live here; every operation calls the
same Recognizer / Gallery methods as the CLI and the Python API. FastAPI and uvicorn are
the optional ``serve`` extra: ``import megaclass`` never imports them.

Example
-------
>>> from megaclass.serve import create_app                     # doctest: +SKIP
>>> app = create_app("model/", "gallery/")                      # doctest: +SKIP
>>> import uvicorn; uvicorn.run(app, host="127.0.0.1", port=8000)  # doctest: +SKIP
"""

from __future__ import annotations

__all__ = ["create_app", "Limits"]


def __getattr__(name: str):
    # lazy: the CLI imports megaclass.serve.commands at start-up, which must not need
    # FastAPI (an optional extra) or torch until `megaclass serve` actually runs
    if name == "create_app":
        from .app import create_app

        return create_app
    if name == "Limits":
        from .limits import Limits

        return Limits
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
