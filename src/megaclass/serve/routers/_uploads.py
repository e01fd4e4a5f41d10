"""Read multipart uploads (async) and decode them to PIL images (in a worker thread)."""

from __future__ import annotations

import json

from fastapi import UploadFile

from ...errors import InvalidInputError
from ..limits import Limits, decode_upload


async def read_uploads(files: list[UploadFile], limits: Limits) -> list[tuple[str, bytes]]:
    """``(name, bytes)`` of each upload, after checking the image-count limit."""
    limits.check_count("images", len(files))
    return [(f.filename or f"file {i}", await f.read()) for i, f in enumerate(files)]


def decode_all(uploads: list[tuple[str, bytes]], limits: Limits) -> list:
    """Decode every upload first, so that one bad file fails the request before any write."""
    if not uploads:
        raise InvalidInputError("no images uploaded")
    return [decode_upload(data, name, limits) for name, data in uploads]


def parse_meta(meta: str | None) -> dict | None:
    """The optional ``meta`` form field: a JSON object."""
    if meta is None or meta == "":
        return None
    try:
        value = json.loads(meta)
    except ValueError as exc:
        raise InvalidInputError(f"meta must be a JSON object: {exc}") from None
    if not isinstance(value, dict):
        raise InvalidInputError(f"meta must be a JSON object, got {type(value).__name__}")
    return value
