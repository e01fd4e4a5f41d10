"""Fine-tuning (issue 13 part 4): --init-from, --backbone, --freeze, --pretrained-lr-scale,
--unfreeze-after; and their bad input (part 7)."""

from __future__ import annotations

import doctest
import json
import shutil
import sys
import types

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from megaclass import GlyphSource, Trainer
from megaclass.data.folder import ImageFolderSource
from megaclass.data.input_spec import InputSpec
from megaclass.errors import ConfigError
from megaclass.models import Encoder, EncoderConfig
from megaclass.models import backbones as backbones_module
from megaclass.models import finetune as finetune_module
from megaclass.models.backbones import parse_backbone
from megaclass.models.finetune import init_from, stage_names, stage_of
from megaclass.train import latest_checkpoint

TINY = dict(batch_size=32, dim=16, widths=(8, 16), progress=False, num_workers=0)
STEM_STAGE1 = ("features.0.", "features.1.", "features.3.")  # widths (8, 16), 1 block per stage


@pytest.fixture(scope="module")
def ref_dir(tmp_path_factory):
    """A small glyph model (dim 16, widths 8,16) to start from."""
    path = tmp_path_factory.mktemp("ref")
    Trainer(GlyphSource(range(20), samples_per_class=8), steps=3, seed=5, **TINY).fit().encoder_.save(path)
    return path


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """root/<class>/<image>.png: 6 classes x 4 grayscale glyph drawings (unseen by the ref model)."""
    from PIL import Image

    root = tmp_path_factory.mktemp("photos")
    for cid in range(500, 506):
        (root / f"c{cid}").mkdir()
        for i, img in enumerate(GlyphSource.samples(cid, n=4, seed=1)):
            Image.fromarray((img[0].numpy() * 255).astype("uint8")).save(root / f"c{cid}" / f"{i}.png")
    return root


def _frozen(name: str) -> bool:
    return name.startswith(STEM_STAGE1)


def test_finetune_on_folder_keeps_frozen_stages_and_trains_the_rest(ref_dir, folder):
    ref = Encoder.load(ref_dir)
    before = {k: v.clone() for k, v in ref.state_dict().items()}
    trainer = Trainer(ImageFolderSource(folder), steps=4, init_from=str(ref_dir),
                      freeze=["stem", "stage1"], m_per_class=4, **{**TINY, "batch_size": 16})
    enc = trainer.fit().encoder_
    after = enc.state_dict()
    assert set(after) == set(before)
    frozen = [k for k in after if _frozen(k)]
    assert len(frozen) == 18  # conv + BN (4 tensors + step counter) of the stem, 2 convs + 2 BNs of stage1
    for k in frozen:  # weights and BatchNorm statistics untouched (BN in eval while frozen)
        assert torch.equal(after[k], before[k]), k
    changed = [k for k in after if not _frozen(k) and not k.endswith("num_batches_tracked")]
    assert changed and all(not torch.equal(after[k], before[k]) for k in changed), \
        [k for k in changed if torch.equal(after[k], before[k])]
    assert all(p.requires_grad for p in enc.parameters())  # released at the end of the run
    assert trainer.init_report_.counts() == (35, 35) and not trainer.init_report_.new
    trained_with = enc.config.extra["trained_with"]
    assert trained_with["init_from"] == ref.fingerprint()
    assert trained_with["freeze"] == ["stem", "stage1"]


def test_init_report_lists_loaded_and_new_tensors(ref_dir):
    trainer = Trainer(GlyphSource(range(10), samples_per_class=8), steps=1, init_from=str(ref_dir),
                      **{**TINY, "dim": 32})
    trainer.fit()
    report = trainer.init_report_
    assert report.counts() == (30, 35)
    assert [n for n, _ in report.new] == ["projection.2.weight", "projection.3.weight", "projection.3.bias",
                                          "projection.3.running_mean", "projection.3.running_var"]
    text = report.summary()
    assert f"init from {ref_dir}" in text and "loaded 30/35 tensors" in text
    assert "projection.2.weight (shape 32x16 vs 16x16 in the source)" in text
    assert report.to_dict()["loaded"] == 30 and report.unused == []


def test_one_to_three_channels_adapts_the_stem(ref_dir):
    ref = Encoder.load(ref_dir)
    new = Encoder(EncoderConfig(dim=16, widths=(8, 16)).with_input(InputSpec(channels=3, size=32)))
    report = init_from(new, ref)
    assert list(report.adapted) == ["features.0.weight"] and report.counts() == (35, 35)
    assert "1 -> 3 input channels" in report.summary() and "channels 1 -> 3" in report.summary()
    assert torch.allclose(new.features[0].weight, ref.features[0].weight.repeat(1, 3, 1, 1) / 3)
    # the point of the adaptation: a grey image on 3 channels embeds as it did in the 1-channel model
    x = GlyphSource.samples(7, n=4)
    assert torch.allclose(new.embed(x.repeat(1, 3, 1, 1)), ref.embed(x), atol=1e-5)
    back = Encoder(EncoderConfig(dim=16, widths=(8, 16)))  # 3 -> 1 sums the channels: the round trip
    assert list(init_from(back, new).adapted) == ["features.0.weight"]
    assert torch.allclose(back.features[0].weight, ref.features[0].weight, atol=1e-6)
    # and through the trainer, from a 3-channel source
    t = Trainer(GlyphSource(range(10), samples_per_class=8, channels=3), steps=1,
                init_from=str(ref_dir), **TINY)
    assert t.fit().encoder_.config.in_channels == 3 and list(t.init_report_.adapted) == ["features.0.weight"]


def test_nothing_compatible_or_not_a_model_is_a_config_error(ref_dir, tmp_path):
    src = GlyphSource(range(10), samples_per_class=8)
    with pytest.raises(ConfigError, match=f"--init-from {ref_dir}: nothing in it fits"):
        Trainer(src, steps=1, init_from=str(ref_dir), backbone="resnet:widths=12,24",
                **{**TINY, "dim": 24}).fit()
    with pytest.raises(ConfigError, match="not a megaclass model directory"):
        Trainer(src, steps=1, init_from=str(tmp_path / "missing"), **TINY).fit()
    (tmp_path / "onnx").mkdir()
    (tmp_path / "onnx" / "config.json").write_text(json.dumps({"kind": "megaclass.onnx_encoder"}))
    with pytest.raises(ConfigError, match="imported ONNX encoder has no trainable weights"):
        Trainer(src, steps=1, init_from=str(tmp_path / "onnx"), **TINY).fit()


def test_unknown_stage_and_bad_options_are_config_errors(ref_dir):
    src = GlyphSource(range(10), samples_per_class=8)
    with pytest.raises(ConfigError, match="'stage9'.*stages are stem, stage1, stage2, projection"):
        Trainer(src, steps=1, freeze="stem,stage9", **TINY).fit()
    with pytest.raises(ConfigError, match="unfreeze_after needs freeze"):
        Trainer(src, steps=1, unfreeze_after=3, **TINY)
    with pytest.raises(ConfigError, match="pretrained_lr_scale"):
        Trainer(src, steps=1, pretrained_lr_scale=0, **TINY)
    for bad in ("vgg16", "resnet:width=3", "resnet:blocks=two", "timm:"):
        with pytest.raises(ConfigError):
            Trainer(src, steps=1, backbone=bad, **TINY)


def test_unfreeze_after_and_resume_with_pretrained_lr_scale(ref_dir, tmp_path):
    src = GlyphSource(range(12), samples_per_class=8)
    ref = Encoder.load(ref_dir).state_dict()
    opts = dict(steps=5, seed=2, init_from=str(ref_dir), freeze=["stem"], unfreeze_after=2,
                pretrained_lr_scale=0.1, **TINY)
    full = Trainer(src, **opts)
    enc = full.fit().encoder_
    assert not torch.equal(enc.features[0].weight, ref["features.0.weight"])  # trained after step 2
    # frozen for exactly 2 steps: stop there and the stem is still the reference's
    two = Trainer(src, **{**opts, "steps": 2}).fit().encoder_
    assert torch.equal(two.features[0].weight, ref["features.0.weight"])
    assert not torch.equal(two.features[4].conv1.weight, ref["features.4.conv1.weight"])
    # interrupted after the unfreeze, resumed: same run; the pretrained group keeps its scale
    first = Trainer(src, checkpoint_dir=str(tmp_path), checkpoint_every=3, **opts)
    first.fit()
    state = json.loads((tmp_path / "step-00000003" / "state.json").read_text())
    groups = state["optimizer"]["param_groups"]
    assert [g["lr_scale"] for g in groups] == [1.0, 0.1]
    assert groups[1]["lr"] == pytest.approx(0.1 * groups[0]["lr"])
    shutil.rmtree(latest_checkpoint(tmp_path))
    (tmp_path / "latest").write_text("step-00000003")
    resumed = Trainer(src, checkpoint_dir=str(tmp_path), resume=True, **opts)
    out = resumed.fit().encoder_
    assert [h["loss"] for h in resumed.history_] == pytest.approx([h["loss"] for h in full.history_],
                                                                  abs=1e-4)
    x = GlyphSource.samples(3, n=2)
    assert torch.allclose(out.embed(x), enc.embed(x), atol=1e-4)


def test_backbone_grammar_and_stages():
    assert parse_backbone("resnet") == {"backbone": "resnet"}
    assert parse_backbone("resnet:widths=16,32;blocks=2;stem_stride=1") == {
        "backbone": "resnet", "widths": (16, 32), "blocks": 2, "stem_stride": 1}
    t = Trainer(GlyphSource(range(10), samples_per_class=8), steps=1,
                backbone="resnet:widths=8,16;blocks=2", freeze="stage1", **TINY)
    enc = t.fit().encoder_
    assert enc.config.blocks == 2 and enc.config.widths == (8, 16)
    assert [stage_of(f"features.{i}", enc.config) for i in range(7)] == [
        "stem", "stem", "stem", "stage1", "stage1", "stage2", "stage2"]
    assert stage_names(EncoderConfig(backbone="timm:x")) == ["backbone", "projection"]


def test_old_configs_load_with_unchanged_fingerprints(tmp_path):
    enc = Encoder(EncoderConfig(dim=16, widths=(8, 16)))
    enc.save(tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    assert cfg["backbone"] == "resnet"
    del cfg["backbone"]  # as written before backbones existed
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    old = Encoder.load(tmp_path)
    assert old.config.backbone == "resnet" and old.fingerprint() == cfg["fingerprint"]
    # the fingerprint algorithm of the release before backbones (and input contracts) existed
    import hashlib
    from dataclasses import asdict

    legacy = asdict(old.config)
    for key in ("resize", "polarity", "mean", "std", "backbone"):
        del legacy[key]
    legacy["widths"] = list(legacy["widths"])
    h = hashlib.sha256(json.dumps(legacy, sort_keys=True).encode())
    for name, t in sorted(old.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().contiguous().numpy().tobytes())
    assert old.fingerprint() == h.hexdigest()[:16]
    blocks2 = Encoder(EncoderConfig(dim=16, widths=(8, 16), blocks=2))
    assert blocks2.fingerprint() != old.fingerprint()


def test_module_docstring_examples_run():
    for module in (finetune_module, backbones_module):
        assert doctest.testmod(module).failed == 0, module.__name__


# -- timm -------------------------------------------------------------------------------
class _FakeTimmNet(nn.Module):
    """Stands in for a timm model built with num_classes=0 (pooled features)."""

    def __init__(self, in_chans: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_chans, 8, 3, 2, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.num_features = 8

    def forward(self, x):
        return torch.relu(self.bn1(self.conv1(x))).mean(dim=(2, 3))


@pytest.fixture
def fake_timm(monkeypatch):
    calls = []

    def create_model(name, pretrained=False, num_classes=1000, in_chans=3):
        calls.append(dict(name=name, pretrained=pretrained, num_classes=num_classes, in_chans=in_chans))
        return _FakeTimmNet(in_chans)

    module = types.ModuleType("timm")
    module.create_model = create_model
    module.is_model = lambda name: name == "fakenet"
    monkeypatch.setitem(sys.modules, "timm", module)
    return calls


def test_timm_backbone_without_timm_says_so(monkeypatch):
    monkeypatch.setitem(sys.modules, "timm", None)  # import timm -> ImportError
    with pytest.raises(ConfigError, match="optional timm package.*pip install timm"):
        Trainer(GlyphSource(range(10), samples_per_class=8), steps=1, backbone="timm:resnet18", **TINY).fit()


def test_timm_backbone_path_with_local_weights(fake_timm, tmp_path):
    weights = _FakeTimmNet(1)
    with torch.no_grad():
        weights.conv1.weight.fill_(0.25)
    state = {k: v.contiguous() for k, v in weights.state_dict().items()}
    state["fc.weight"] = torch.zeros(10, 8)  # the classifier of a timm checkpoint: not used
    save_file(state, str(tmp_path / "w.safetensors"))
    src = GlyphSource(range(10), samples_per_class=8)
    with pytest.raises(ConfigError, match="not found.*never downloads"):
        Trainer(src, steps=1, backbone="timm:fakenet", backbone_weights=str(tmp_path / "nope.safetensors"),
                **TINY).fit()
    with pytest.raises(ConfigError, match="no architecture 'nonet'"):
        Trainer(src, steps=1, backbone="timm:nonet", **TINY).fit()
    t = Trainer(src, steps=2, backbone="timm:fakenet", backbone_weights=str(tmp_path / "w.safetensors"),
                freeze="backbone", **TINY)
    enc = t.fit().encoder_
    assert fake_timm[-1] == dict(name="fakenet", pretrained=False, num_classes=0, in_chans=1)
    assert t.backbone_report_.unused == ["features.fc.weight"]
    assert "features.conv1.weight" in t.backbone_report_.loaded
    assert torch.equal(enc.features.conv1.weight, torch.full_like(enc.features.conv1.weight, 0.25))  # frozen
    assert enc.config.extra["trained_with"]["backbone_weights"] == t.backbone_report_.fingerprint
    enc.save(tmp_path / "model")  # config.json names the architecture; safetensors holds the weights
    assert json.loads((tmp_path / "model" / "config.json").read_text())["backbone"] == "timm:fakenet"
    back = Encoder.load(tmp_path / "model")
    x = GlyphSource.samples(4, n=3)
    assert torch.allclose(back.embed(x), enc.embed(x), atol=1e-6) and back.fingerprint() == enc.fingerprint()
    with pytest.raises(ConfigError, match="stages are backbone, projection"):
        Trainer(src, steps=1, backbone="timm:fakenet", freeze="stem", **TINY).fit()


def test_real_timm_backbone(tmp_path):
    try:
        import timm
    except ImportError as exc:
        pytest.skip(f"timm does not import here ({exc}): timm 1.0 needs torchvision at import, and no "
                    "torchvision imports beside torch 2.13 on this machine")
    net = timm.create_model("resnet18", pretrained=False, num_classes=0, in_chans=3)
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(tmp_path / "r18.safetensors"))
    src = GlyphSource(range(6), samples_per_class=4, channels=3)
    t = Trainer(src, steps=1, backbone="timm:resnet18", backbone_weights=str(tmp_path / "r18.safetensors"),
                freeze="backbone", **{**TINY, "batch_size": 8})
    enc = t.fit().encoder_
    assert t.backbone_report_.new == [] and enc.config.backbone == "timm:resnet18"
    enc.save(tmp_path / "m")
    assert Encoder.load(tmp_path / "m").fingerprint() == enc.fingerprint()


# -- the command line -------------------------------------------------------------------
def test_cli_train_init_from_freeze_end_to_end(ref_dir, folder, tmp_path):
    from test_cli import run

    out = json.loads(run("train", folder, "-m", tmp_path / "ft", "--init-from", ref_dir,
                         "--freeze", "stem,stage1", "--pretrained-lr-scale", "0.1", "--steps", "3",
                         "--batch-size", "16", "--dim", "16", "--workers", "0", "--json").stdout)
    assert out["init_from"]["loaded"] == out["init_from"]["total"] == 35 and out["init_from"]["new"] == []
    a, b = Encoder.load(ref_dir), Encoder.load(tmp_path / "ft")
    assert b.config.extra["trained_with"]["init_from"] == a.fingerprint() == out["init_from"]["fingerprint"]
    assert b.config.extra["trained_with"]["pretrained_lr_scale"] == 0.1
    sa, sb = a.state_dict(), b.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa if _frozen(k))
    assert not torch.equal(sa["projection.2.weight"], sb["projection.2.weight"])
    bad = run("train", folder, "-m", tmp_path / "x", "--init-from", ref_dir, "--freeze", "stage7",
              "--steps", "1", "--workers", "0", check=False)
    assert bad.returncode == 2 and "stages are stem, stage1, stage2, projection" in bad.stderr
    assert not (tmp_path / "x").exists()
