"""Images an attacker (or a careless user) sends: the work per image and per request is bounded.

Found when the service was probed (issue 12, part 5): a 16 KB PNG of 32768x512 pixels
passed the pixel limit and was padded to a 32768^2 square (~4.9 GB for 17 s); a
16777216x1 PNG asked image normalisation for ~10^15 bytes and ended in HTTP 500.
"""

from __future__ import annotations

import io
import subprocess
import sys
import textwrap

import pytest
from PIL import Image

from megaclass.data.images import InputSpec, open_image, to_batch, to_input
from megaclass.errors import ImageTooLargeError
from megaclass.serve.limits import Limits, PayloadTooLargeError
from megaclass.serve.routers._uploads import decode_all


def _png(w: int, h: int, value: int = 0) -> bytes:
    buf = io.BytesIO()
    Image.new("L", (w, h), value).save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def test_a_one_pixel_high_strip_is_normalised_without_a_giant_square():
    # before: padding to a 16777216^2 square -> RuntimeError (allocation of ~10^15 bytes)
    strip = Image.new("L", (1 << 24, 1), 255)
    for spec in (InputSpec(size=32), InputSpec.preset("photo", size=32)):
        x = to_input(strip, spec=spec)
        assert x.shape == (spec.channels, 32, 32)
        assert bool((x >= 0).all() and (x <= 1).all())


def test_a_wide_png_costs_memory_of_its_pixels_not_of_its_padded_square(tmp_path):
    # before: ~4.9 GB peak (the 32768x512 image padded to 32768x32768 float32)
    path = tmp_path / "wide.png"
    path.write_bytes(_png(32768, 512))
    assert path.stat().st_size < 64 * 1024  # a small file...
    code = textwrap.dedent(f"""
        from megaclass.data.images import to_batch
        x = to_batch([{str(path)!r}] * 2, size=32)
        assert tuple(x.shape) == (2, 1, 32, 32), x.shape
        # VmHWM is this process image's own peak; ru_maxrss would keep the forking parent's
        # (pytest's) RSS across exec and fail a long suite for nothing
        hwm = [ln for ln in open("/proc/self/status") if ln.startswith("VmHWM:")][0]
        print(int(hwm.split()[1]) // 1024)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    peak_mib = int(out.stdout.strip().splitlines()[-1])
    assert peak_mib < 1024, f"peak RSS {peak_mib} MiB"  # ...that may not need gigabytes


def test_open_image_refuses_by_header_before_decoding():
    data = _png(32768, 512)
    with pytest.raises(ImageTooLargeError, match="max_side"):
        open_image(data, what="upload 'wide.png'", max_side=16384)
    with pytest.raises(ImageTooLargeError, match="max_pixels"):
        open_image(data, what="upload 'wide.png'", max_pixels=1 << 20)
    img = open_image(data, spec=InputSpec(size=32))
    assert max(img.size) <= 4 * 32  # box-reduced right after decoding


def test_the_service_refuses_the_strip_and_the_wide_png_with_413():
    limits = Limits()
    for w, h in ((1 << 24, 1), (32768, 512)):
        with pytest.raises(PayloadTooLargeError, match="max_side"):
            decode_all([("bomb.png", _png(w, h))], limits, InputSpec(size=32))


def test_the_decoded_pixels_of_a_whole_request_are_bounded():
    limits = Limits(max_request_pixels=3 * 4096 * 4096)
    one = _png(4096, 4096)  # allowed alone (max_pixels)
    assert len(decode_all([("a.png", one)] * 3, limits, InputSpec(size=32))) == 3
    with pytest.raises(PayloadTooLargeError, match="max_request_pixels"):
        decode_all([("a.png", one)] * 4, limits, InputSpec(size=32))


def test_decoded_uploads_are_reduced_to_about_twice_the_model_size():
    images = decode_all([("a.png", _png(4000, 3000, 200))], Limits(), InputSpec.preset("photo", size=56))
    assert min(images[0].size) <= 4 * 56
    assert to_batch(images, spec=InputSpec.preset("photo", size=56)).shape == (1, 3, 56, 56)
