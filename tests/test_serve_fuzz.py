"""Fuzzing: schemathesis generates requests from the served OpenAPI schema; none may get a 5xx."""

from __future__ import annotations

import pytest

pytest.importorskip("fastapi")
schemathesis = pytest.importorskip("schemathesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from schemathesis.checks import not_a_server_error  # noqa: E402

from _serve_helpers import glyph_pngs  # noqa: E402
from megaclass.serve import Limits, create_app  # noqa: E402


@pytest.fixture(scope="module")
def fuzz_app(tiny_encoder, tmp_path_factory):
    app = create_app(tiny_encoder, tmp_path_factory.mktemp("fuzz") / "g",
                     limits=Limits(max_images=4, max_vectors=8, max_body_bytes=100_000))
    svc = app.state.service
    token = svc.keys.add("fuzz", "admin")[1]
    import io

    from PIL import Image

    for c in (1, 2):  # something to identify against
        images = [Image.open(io.BytesIO(b)) for b in glyph_pngs(c, 2)]
        svc.recognizer.enroll(f"c{c}", images)
    return app, token


@pytest.fixture(scope="module")
def fuzz_schema(fuzz_app):
    return schemathesis.openapi.from_asgi("/openapi.json", fuzz_app[0])


@pytest.mark.slow
def test_no_server_errors(fuzz_schema, fuzz_app):
    """Every operation, 25 generated cases each (derandomised, so a run is reproducible)."""
    headers = {"Authorization": f"Bearer {fuzz_app[1]}"}
    operations = [result.ok() for result in fuzz_schema.get_all_operations()]
    assert len(operations) >= 14
    for operation in operations:

        @settings(max_examples=25, deadline=None, derandomize=True, database=None,
                  suppress_health_check=list(HealthCheck))
        @given(case=operation.as_strategy())
        def check(case):
            case.call_and_validate(headers=headers, checks=[not_a_server_error])

        check()
