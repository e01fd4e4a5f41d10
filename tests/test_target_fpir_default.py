"""One default target FPIR (1 %) for the API, the CLI, the service and the demo."""

from __future__ import annotations

import inspect

from megaclass.evaluate.open_set import DEFAULT_TARGET_FPIR


def _default(fn, name: str = "target_fpir"):
    value = inspect.signature(fn).parameters[name].default
    return getattr(value, "default", value)  # typer / FastAPI wrap the default in their Option/Form


def test_every_entry_point_defaults_to_the_one_constant():
    from megaclass.cli import calibrate as cli_calibrate
    from megaclass.demo import DemoConfig
    from megaclass.evaluate.scaling import gallery_size_curve
    from megaclass.fusion import FusedRecognizer
    from megaclass.recognizer import Recognizer
    from megaclass.serve.routers.gallery import calibrate as http_calibrate

    assert DEFAULT_TARGET_FPIR == 0.01  # the README's operating point
    defaults = {
        "Recognizer.calibrate": _default(Recognizer.calibrate),
        "Recognizer.calibrate_vectors": _default(Recognizer.calibrate_vectors),
        "FusedRecognizer.calibrate": _default(FusedRecognizer.calibrate),
        "megaclass calibrate": _default(cli_calibrate),
        "POST /calibrate": _default(http_calibrate),
        "demo": DemoConfig().target_fpir,
        "gallery_size_curve": _default(gallery_size_curve),
    }
    assert defaults == dict.fromkeys(defaults, DEFAULT_TARGET_FPIR)
