"""The shipped reference model: loads by name from a fresh clone and beats raw pixels widely."""

import pytest

from megaclass.errors import ModelFormatError
from megaclass.evaluate.protocol import OpenSetProtocol, score_encoder, score_pixels
from megaclass.models import load_encoder
from megaclass.models.pretrained import SHIPPED, resolve_model_path, shipped_dir


@pytest.mark.parametrize("name, dim, fingerprint", [("reference", 256, "04d0b3c70d4e5527"),
                                                     ("reference-v2", 256, "e2fd7d5376da6d03"),
                                                     ("reference-v1", 128, "03c005503edb62df")])
def test_reference_weights_ship_and_load_by_name(name, dim, fingerprint):
    """The shipped encoders load by name with the weights their cards describe (the
    fingerprint is of the weights: a changed file is a different model)."""
    d = shipped_dir(name)
    for part in ("model.safetensors", "config.json", "CARD.md", "train-log.json"):
        assert (d / part).is_file(), d / part
    enc = load_encoder(name)
    assert enc.dim == dim and enc.fingerprint() == load_encoder(d).fingerprint() == fingerprint
    assert (d / "model.safetensors").stat().st_size < 20 * 2**20  # "a few MB"


def test_a_local_folder_of_the_same_name_wins(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert resolve_model_path("reference") == shipped_dir("reference")
    (tmp_path / "reference").mkdir()
    assert resolve_model_path("reference").resolve() == (tmp_path / "reference").resolve()
    with pytest.raises(ModelFormatError):
        load_encoder("reference")  # the empty local folder is not a model: it is not silently skipped
    assert "reference" in SHIPPED


def test_reference_model_beats_raw_pixels_by_a_wide_margin():
    p = OpenSetProtocol(enrolled=300, per_class=3, non_mated=300).render()
    model, pixels = score_encoder(load_encoder("reference"), p), score_pixels(p)
    assert model["top1"] >= pixels["top1"] + 0.4, (model, pixels)
    assert model["fnir_at_extra_fpir"] <= pixels["fnir_at_extra_fpir"] - 0.4, (model, pixels)
