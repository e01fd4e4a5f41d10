"""Read multipart uploads (async) and decode them to PIL images (in a worker thread)."""

from __future__ import annotations

import json

from fastapi import UploadFile

from ...data.input_spec import InputSpec
from ...errors import InvalidInputError
from ..limits import Limits, PayloadTooLargeError, decode_upload, image_size


async def read_uploads(files: list[UploadFile], limits: Limits) -> list[tuple[str, bytes]]:
    """``(name, bytes)`` of each upload, after checking the image-count limit."""
    limits.check_count("images", len(files))
    return [(f.filename or f"file {i}", await f.read()) for i, f in enumerate(files)]


def decode_all(uploads: list[tuple[str, bytes]], limits: Limits, spec: InputSpec | None = None) -> list:
    """Decode every upload first, so that one bad file fails the request before any write.

    The request's decoded pixels are added up from the headers before anything is decoded
    (``max_request_pixels``); each image is then decoded and reduced to about twice the
    model's input size (``spec``) before the next one, so one full-size image at most is
    held at a time.
    """
    if not uploads:
        raise InvalidInputError("no images uploaded")
    total = 0
    for name, data in uploads:
        w, h = image_size(data, name)
        total += w * h
        if total > limits.max_request_pixels:
            raise PayloadTooLargeError(
                f"the images of this request have over {limits.max_request_pixels} pixels in all "
                f"(reached at upload {name!r}, {w}x{h}); the limit is max_request_pixels")
    return [decode_upload(data, name, limits, spec) for name, data in uploads]


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
