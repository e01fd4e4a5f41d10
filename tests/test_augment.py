"""Batch augmentation: presets keep the input contract, seeds reproduce, the grammar is checked,
training and the preview command use it."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from megaclass import GlyphSource, Trainer, train_encoder
from megaclass.data.augment import OPS, PRESETS, Augment, build_augment, parse_augment
from megaclass.errors import ConfigError, InvalidInputError

ROOT = Path(__file__).resolve().parents[1]
TINY = dict(batch_size=32, dim=16, widths=(8, 16), progress=False, num_workers=0)


def _batch(channels: int, n: int = 16, size: int = 32) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.rand(n, channels, size, size, generator=g)


@pytest.mark.parametrize("preset", [p for p in PRESETS if p != "none"])
@pytest.mark.parametrize("channels", [1, 3])
def test_presets_keep_shape_range_dtype(preset, channels):
    aug = build_augment(preset, channels=channels, size=32, seed=0)
    for dtype in (torch.float32, torch.float64):
        x = _batch(channels).to(dtype)
        y = aug(x, step=0)
        assert y.shape == x.shape and y.dtype == dtype
        assert float(y.min()) >= 0.0 and float(y.max()) <= 1.0
        assert not torch.equal(x, y)  # it did something
    one = aug(_batch(channels)[0], step=0)  # a single (C, H, W) image
    assert one.shape == (channels, 32, 32)


def test_half_precision_comes_back_as_half():
    x = _batch(3).to(torch.bfloat16)
    assert build_augment("default", channels=3, size=32, seed=0)(x, step=1).dtype == torch.bfloat16


def test_same_seed_and_step_same_batch_and_global_rng_untouched():
    x = _batch(3)
    a = build_augment("default", channels=3, size=32, seed=7)
    b = build_augment("default", channels=3, size=32, seed=7)
    state = torch.get_rng_state()
    assert torch.equal(a(x, step=5), b(x, step=5))
    assert torch.equal(torch.get_rng_state(), state)  # the caller's random stream is not consumed
    assert not torch.equal(a(x, step=5), a(x, step=6))
    assert not torch.equal(a(x, step=5), build_augment("default", channels=3, size=32, seed=8)(x, step=5))
    # without step=, successive calls continue one reproducible stream
    c, d = (build_augment("default", channels=3, size=32, seed=7) for _ in range(2))
    assert torch.equal(c(x), d(x)) and torch.equal(c(x), d(x))
    assert torch.equal(build_augment("default", channels=3, size=32, seed=7)(x), a(x, step=0))


def test_none_is_identity():
    assert build_augment("none", channels=1, size=32, seed=0) is None
    assert build_augment(None, channels=1, size=32, seed=0) is None
    assert build_augment([], channels=3, size=32, seed=0) is None
    x = _batch(1)
    y = Augment([], channels=1, size=32)(x)
    assert torch.equal(x, y) and y is not x


def test_handwriting_never_flips_default_does():
    # a bar on the left third: a flip would put its centre of mass on the right
    x = torch.zeros(256, 1, 32, 32)
    x[:, :, 6:26, 4:9] = 1.0
    cols = torch.arange(32.0)

    def centre_x(batch):
        return (batch.sum(dim=(1, 2)) * cols).sum(dim=1) / batch.sum(dim=(1, 2, 3))

    hand = build_augment("handwriting", channels=1, size=32, seed=0)
    assert "flip" not in hand.names
    for step in range(4):
        assert float(centre_x(hand(x, step=step)).max()) < 12
    flipped = centre_x(build_augment("default", channels=1, size=32, seed=0)(x, step=0)) > 20
    assert 0.3 < float(flipped.float().mean()) < 0.7  # the test can see a flip when there is one


def test_json_pipeline_forms_and_defaults(tmp_path):
    steps = [{"op": "flip", "p": 1.0}, {"op": "blur", "sigma": [0.5, 0.5]}]
    path = tmp_path / "aug.json"
    path.write_text(json.dumps({"steps": steps}))
    parsed = [parse_augment(form)[1] for form in (steps, json.dumps(steps), str(path), {"steps": steps})]
    assert all(p == parsed[0] for p in parsed)
    assert parsed[0][1] == {"op": "blur", **OPS["blur"], "sigma": [0.5, 0.5]}  # defaults filled in
    assert parse_augment({"op": "erase"})[1][0]["p"] == OPS["erase"]["p"]
    x = _batch(1)
    flip = build_augment([{"op": "flip", "p": 1.0}], channels=1, size=32, seed=0)
    assert torch.equal(flip(x, step=0), torch.flip(x, dims=[-1]))


def test_jitter_on_one_channel_uses_brightness_and_contrast_only():
    aug = build_augment([{"op": "jitter", "saturation": 0.5, "hue": 0.1, "p": 1.0}],
                        channels=1, size=32, seed=0)
    assert aug(_batch(1), step=0).shape == (16, 1, 32, 32)


@pytest.mark.parametrize("spec, message", [
    ([{"op": "twirl"}], "unknown augment op 'twirl'"),
    ([{"op": "flip", "prob": 0.5}], "unknown parameter.*'flip': prob"),
    ([{"op": "flip", "p": 1.5}], "p must be a number in"),
    ([{"op": "crop", "scale": [0.9, 0.5]}], "scale must satisfy"),
    ([{"op": "blur", "kernel": 4}], "kernel must be an odd"),
    ('[{"op": "flip",', "not valid JSON"),
    ("sparkly", "unknown augmentation 'sparkly'"),
    ([["flip"]], 'must be an object with an "op"'),
    ({"ops": []}, '"op".*"steps"'),
])
def test_bad_pipelines_raise_config_error_naming_the_problem(spec, message):
    with pytest.raises(ConfigError, match=message):
        parse_augment(spec)


def test_wrong_batch_shape_is_named():
    aug = build_augment("handwriting", channels=1, size=32, seed=0)
    with pytest.raises(InvalidInputError, match=r"\(N, 1, 32, 32\)"):
        aug(_batch(3))


def test_training_with_augmentation_runs_and_is_recorded():
    enc = train_encoder(GlyphSource(range(20), samples_per_class=8), steps=2, augment="default", **TINY)
    record = enc.config.extra["trained_with"]["augment"]
    assert record["name"] == "default" and [s["op"] for s in record["steps"]] == \
        [s["op"] for s in PRESETS["default"]]
    with pytest.raises(ConfigError, match="unknown augment op"):
        Trainer(GlyphSource(range(5), samples_per_class=4), augment=[{"op": "twirl"}], **TINY)


def test_augment_none_trains_exactly_like_no_augmentation():
    src = GlyphSource(range(20), samples_per_class=8)
    a, b = Trainer(src, steps=3, **TINY), Trainer(src, steps=3, augment="none", **TINY)
    a.fit(), b.fit()
    assert [h["loss"] for h in a.history_] == [h["loss"] for h in b.history_]
    assert "augment" not in b.encoder_.config.extra["trained_with"]


def test_resume_with_augmentation_continues_exactly(tmp_path):
    import shutil

    from megaclass.train import latest_checkpoint

    src = GlyphSource(range(20), samples_per_class=8)
    full = Trainer(src, steps=4, seed=1, augment="handwriting", **TINY)
    full.fit()
    first = Trainer(src, steps=4, seed=1, augment="handwriting", checkpoint_dir=str(tmp_path),
                    checkpoint_every=2, **TINY)
    first.fit()
    shutil.rmtree(latest_checkpoint(tmp_path))
    (tmp_path / "latest").write_text("step-00000002")
    resumed = Trainer(src, steps=4, seed=1, augment="handwriting", checkpoint_dir=str(tmp_path),
                      resume=True, **TINY)
    resumed.fit()
    assert [h["loss"] for h in resumed.history_] == pytest.approx([h["loss"] for h in full.history_],
                                                                  abs=1e-4)


def test_augment_preview_cli_writes_the_grid(tmp_path):
    from megaclass.data.commands import grid_size

    out = tmp_path / "grid.png"
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    proc = subprocess.run([sys.executable, "-m", "megaclass.cli", "augment-preview", "glyphs:0-8",
                           "-o", str(out), "--augment", "handwriting", "--n", "8", "--rows", "3",
                           "--json"], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    from PIL import Image

    with Image.open(out) as img:
        assert img.size == grid_size(8, 3, 96) == (result["width"], result["height"])
    assert result["classes"] == [f"glyph-{i}" for i in range(8)]
    bad = subprocess.run([sys.executable, "-m", "megaclass.cli", "augment-preview", "glyphs:0-8",
                          "-o", str(tmp_path / "x.png"), "--augment", '[{"op": "twirl"}]'],
                         capture_output=True, text=True, env=env, timeout=300)
    assert bad.returncode == 2 and "twirl" in bad.stderr and not (tmp_path / "x.png").exists()
