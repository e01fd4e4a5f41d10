"""Colour photos in: the model's input contract decides the tensor, the same everywhere.

Issue 13 part 1: every image used to be forced to grayscale, padded and inverted when its
border was bright (a colour photo of a city came out as a negative).
"""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import torch
from PIL import Image

from megaclass.data.folder import ImageFolderSource
from megaclass.data.images import InputSpec, load_image, to_batch, to_input
from megaclass.errors import ConfigError
from megaclass.models import Encoder, EncoderConfig
from megaclass.models.encoder import CONFIG_FILE
from megaclass.serve.limits import Limits
from megaclass.serve.routers._uploads import decode_all

PHOTO = InputSpec.preset("photo", size=32)


def _photo(w=96, h=64, seed=0) -> Image.Image:
    """A bright-bordered colour picture: sky-blue top, red block in the middle."""
    rng = np.random.default_rng(seed)
    a = np.zeros((h, w, 3), np.uint8)
    a[:] = (200, 220, 255)
    a[h // 4 : 3 * h // 4, w // 3 : 2 * w // 3] = (220, 30, 30)
    a = np.clip(a.astype(int) + rng.integers(-5, 6, a.shape), 0, 255).astype(np.uint8)
    return Image.fromarray(a, "RGB")


def test_a_colour_photo_stays_colour_and_is_not_inverted():
    x = to_input(_photo(), spec=PHOTO)
    assert x.shape == (3, 32, 32)
    centre = x[:, 16, 16]
    assert centre[0] > 0.7 and centre[1] < 0.3 and centre[2] < 0.3  # red stays red
    corner = x[:, 0, 16]
    assert corner[2] > 0.9  # the bright sky stays bright: no negative
    gray = to_input(_photo(), size=32)  # the handwriting contract: luma, inverted
    assert gray.shape == (1, 32, 32) and gray[0, 0, 16] < 0.2


def test_resize_policies():
    img = _photo(96, 48)
    crop = to_input(img, spec=PHOTO)  # centre square: the red block fills the middle third
    pad = to_input(img, spec=PHOTO.with_(resize="pad"))  # whole picture, bands top and bottom
    stretch = to_input(img, spec=PHOTO.with_(resize="stretch"))
    assert crop.shape == pad.shape == stretch.shape == (3, 32, 32)
    # the red block's share of the picture follows the geometry: cropped > stretched > padded
    share = {n: float(((t[0] > 0.6) & (t[1] < 0.4)).float().mean()) for n, t in
             (("crop", crop), ("pad", pad), ("stretch", stretch))}
    assert share["crop"] > share["stretch"] > share["pad"] > 0.05


def test_grayscale_input_to_a_colour_model_is_repeated_on_three_channels():
    g = np.tile(np.linspace(0, 255, 40, dtype=np.uint8), (40, 1))
    x = to_input(g, spec=PHOTO)
    assert x.shape == (3, 32, 32) and torch.equal(x[0], x[1]) and torch.equal(x[1], x[2])
    batch = to_batch(torch.rand(4, 1, 32, 32), spec=PHOTO)  # a 1-channel ready batch is converted
    assert batch.shape == (4, 3, 32, 32)


def test_the_same_photo_gives_the_same_tensor_at_train_enroll_identify_and_in_the_service(tmp_path):
    (tmp_path / "cls").mkdir()
    path = tmp_path / "cls" / "a.jpg"
    _photo(640, 480).save(path, quality=92)
    via_path = to_batch([str(path)], spec=PHOTO)[0]
    via_load = load_image(path, spec=PHOTO)
    via_service = to_batch(decode_all([("a.jpg", path.read_bytes())], Limits(), PHOTO), spec=PHOTO)[0]
    for other in (via_load, via_service):
        assert torch.allclose(via_path, other, atol=1e-6)
    # training from a folder keeps decoded images as uint8 (its cache): within half a grey level
    for cache in (True, False):
        item = ImageFolderSource(tmp_path, spec=PHOTO, cache=cache)[0][0]
        assert torch.allclose(via_path, item, atol=0.5 / 255 + 1e-6)


def test_a_colour_model_records_its_contract_and_applies_mean_std(tmp_path):
    enc = Encoder(EncoderConfig(dim=16, widths=(8, 16)).with_input(PHOTO.with_(mean=(120.0, 110.0, 100.0))))
    enc.save(tmp_path / "m")
    cfg = json.loads((tmp_path / "m" / CONFIG_FILE).read_text())
    assert cfg["in_channels"] == 3 and cfg["resize"] == "crop" and cfg["polarity"] == "none"
    assert cfg["mean"] == [120.0, 110.0, 100.0] and cfg["std"] == [127.5] * 3
    back = Encoder.load(tmp_path / "m")
    assert back.input_spec == enc.input_spec and back.fingerprint() == enc.fingerprint()
    x = torch.rand(2, 3, 32, 32)
    assert torch.allclose(back.embed(x), enc.embed(x), atol=1e-6)
    # normalisation happens inside the model: the same weights on shifted inputs differ
    plain = Encoder(EncoderConfig(dim=16, widths=(8, 16), in_channels=3, polarity="none"))
    plain.load_state_dict({k: v for k, v in enc.state_dict().items() if not k.startswith("input_")})
    assert not torch.allclose(plain.embed(x), enc.embed(x), atol=1e-3)


def test_an_old_single_channel_config_loads_unchanged(tmp_path):
    torch.manual_seed(0)
    enc = Encoder(EncoderConfig(dim=16, widths=(8, 16)))
    enc.save(tmp_path / "m")
    cfg = json.loads((tmp_path / "m" / CONFIG_FILE).read_text())
    for key in ("resize", "polarity", "mean", "std"):  # what a config of the previous release lacks
        del cfg[key]
    (tmp_path / "m" / CONFIG_FILE).write_text(json.dumps(cfg))
    old = Encoder.load(tmp_path / "m")
    assert old.input_spec == InputSpec(channels=1, size=32, resize="pad", polarity="auto")
    assert old.fingerprint() == enc.fingerprint() == cfg["fingerprint"]
    assert "input_shift" not in old.state_dict()


def test_bad_contracts_are_refused_with_the_field_named():
    with pytest.raises(ConfigError, match="channels"):
        InputSpec(channels=2)
    with pytest.raises(ConfigError, match="resize"):
        InputSpec(resize="zoom")
    with pytest.raises(ConfigError, match="mean needs 1 or 3"):
        InputSpec(channels=3, mean=(1.0, 2.0))
    with pytest.raises(ConfigError, match="std must be positive"):
        InputSpec(std=(0.0,))


def test_train_and_identify_colour_photos_from_folders_with_the_cli(tmp_path):
    from typer.testing import CliRunner

    from megaclass.cli import app

    rng = np.random.default_rng(0)
    colours = [(220, 30, 30), (30, 200, 40), (40, 60, 230), (230, 210, 40)]
    for split, n in (("train", 6), ("enroll", 3), ("queries", 1)):
        for c, rgb in enumerate(colours):
            d = tmp_path / split / f"class{c}"
            d.mkdir(parents=True)
            for i in range(n):
                a = np.full((60, 80, 3), rgb, np.uint8)
                a = np.clip(a.astype(int) + rng.integers(-20, 21, a.shape), 0, 255).astype(np.uint8)
                buf = io.BytesIO()
                Image.fromarray(a).save(buf, format="JPEG")
                (d / f"{i}.jpg").write_bytes(buf.getvalue())
    runner = CliRunner()
    r = runner.invoke(app, ["train", str(tmp_path / "train"), "-m", str(tmp_path / "model"),
                            "--channels", "3", "--size", "32", "--steps", "3", "--batch-size", "8",
                            "--m-per-class", "2", "--dim", "16", "--workers", "0", "--json"])
    assert r.exit_code == 0, r.output
    model = Encoder.load(tmp_path / "model")
    assert model.input_spec.channels == 3 and model.input_spec.polarity == "none"
    r = runner.invoke(app, ["enroll", "-m", str(tmp_path / "model"), "-g", str(tmp_path / "g"),
                            "--from", str(tmp_path / "enroll"), "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)["classes"] == 4
