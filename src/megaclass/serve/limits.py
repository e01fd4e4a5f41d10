"""Request limits: body bytes, images per request, vectors per request, pixels per image and request.

Exceeding a limit is a :class:`PayloadTooLargeError` (HTTP 413) whose message names the
limit and its value. The body limit is enforced twice: from ``Content-Length`` before the
body is read, and while it streams (for chunked uploads). Image limits are checked from
each file's header *before* anything is decoded: pixels per image, the longest side, and
the decoded pixels of the whole request (a 16 KB PNG can declare 16 million pixels). A
decoded image is then box-reduced to about twice the model's input size at once, so a
request never holds more than one full-size image in memory.

Example
-------
>>> Limits(max_images=16).check_count("images", 20)   # doctest: +SKIP
PayloadTooLargeError: 20 images in one request; the limit is 16 (max_images)
"""

from __future__ import annotations

import io
from dataclasses import dataclass

from fastapi import HTTPException
from PIL import Image

from ..data.images import open_image
from ..data.input_spec import InputSpec
from ..errors import (
    ConfigError,
    CorruptImageError,
    ImageTooLargeError,
    PayloadTooLargeError,
)


@dataclass(frozen=True)
class Limits:
    """Configurable service limits (all positive).

    Parameters
    ----------
    max_body_bytes : largest request body (default 16 MiB).
    max_images : images in one enroll / add / identify request (default 64).
    max_vectors : vectors in one JSON request (default 1024).
    max_pixels : pixels of one decoded image (default 4096 x 4096; stops decompression bombs).
    max_side : longest side of one image in pixels (default 16384).
    max_request_pixels : decoded pixels of all images of one request (default 64 Mpx: four
        images at ``max_pixels``, or five 12-megapixel photos).
    max_k : largest top-k of an identify request (default 100).
    max_calibration_images : images in one ``POST /v1/calibrate`` (default 1000, the
        multipart parser's own file limit: enough for FPIR 1 %, which needs at least 10/FPIR
        non-mated searches; the body and pixel limits still apply, so large photo sets are
        calibrated with ``megaclass calibrate``).
    max_refusals : refused (401) requests per client address and minute that are audited;
        past it they get 429 (see ratelimit.py).
    """

    max_body_bytes: int = 16 * 1024 * 1024
    max_images: int = 64
    max_vectors: int = 1024
    max_pixels: int = 4096 * 4096
    max_side: int = 16384
    max_request_pixels: int = 64 * 1024 * 1024
    max_k: int = 100
    max_calibration_images: int = 1000
    max_refusals: int = 30

    def __post_init__(self) -> None:
        for name, value in vars(self).items():
            if type(value) is not int or value < 1:
                raise ConfigError(f"limit {name} must be a positive int, got {value!r}")

    def check_count(self, what: str, n: int) -> None:
        """Raise PayloadTooLargeError if ``n`` images / vectors / calibration images exceed their limit."""
        name = {"images": "max_images", "vectors": "max_vectors",
                "calibration images": "max_calibration_images"}[what]
        limit = getattr(self, name)
        if n > limit:
            raise PayloadTooLargeError(f"{n} {what} in one request; the limit is {limit} ({name})")


def image_size(data: bytes, name: str) -> tuple[int, int]:
    """Width and height read from an upload's header (nothing decoded), or CorruptImageError."""
    if not data:
        raise CorruptImageError(f"upload {name!r} is empty")
    try:
        with Image.open(io.BytesIO(data)) as img:
            return img.size
    except Image.DecompressionBombError as exc:
        raise PayloadTooLargeError(f"upload {name!r} is too large to decode safely ({exc})") from exc
    except Exception as exc:  # noqa: BLE001 - PIL raises many types for bad data
        raise CorruptImageError(f"cannot decode upload {name!r} as an image: {exc}") from exc


def decode_upload(data: bytes, name: str, limits: Limits, spec: InputSpec | None = None) -> Image.Image:
    """Decode one uploaded file to a PIL image, or raise a typed error naming the upload.

    The pixel and side limits are checked from the header before decoding; with ``spec``
    (the model's input contract) the image is reduced to about twice its input size.
    """
    try:
        return open_image(data, spec=spec, what=f"upload {name!r}", max_pixels=limits.max_pixels,
                          max_side=limits.max_side)
    except ImageTooLargeError as exc:
        raise PayloadTooLargeError(str(exc)) from None


class BodySizeLimit:
    """ASGI middleware: 413 for bodies over ``max_bytes`` (declared or streamed)."""

    def __init__(self, app, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    def _too_large(self) -> HTTPException:
        return HTTPException(413, f"request body over {self.max_bytes} bytes (max_body_bytes)")

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            from starlette.responses import JSONResponse

            response = JSONResponse({"error": "PayloadTooLargeError",
                                     "message": self._too_large().detail}, status_code=413)
            return await response(scope, receive, send)
        seen = 0

        async def counted():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise self._too_large()  # handled by the app's exception handlers
            return message

        return await self.app(scope, counted, send)
