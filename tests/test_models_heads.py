import json

import pytest
import torch
import torch.nn.functional as F

from megaclass.errors import ConfigError, InvalidInputError, ModelFormatError
from megaclass.heads import ArcFaceHead, CosFaceHead, load_head, make_head
from megaclass.models import Encoder, EncoderConfig, load_encoder


def test_encoder_outputs_unit_norm_embeddings():
    enc = Encoder(EncoderConfig(dim=16, widths=(8, 16)))
    out = enc.embed(torch.rand(5, 1, 32, 32))
    assert out.shape == (5, 16)
    assert torch.allclose(out.norm(dim=1), torch.ones(5), atol=1e-5)


def test_encoder_save_load_round_trip(tmp_path):
    enc = Encoder(EncoderConfig(dim=24, widths=(8, 16)))
    enc.train()
    enc(torch.rand(8, 1, 32, 32))  # move BN running stats away from init
    enc.save(tmp_path / "m")
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["config.json", "model.safetensors"]
    loaded = load_encoder(tmp_path / "m")
    x = torch.rand(4, 1, 32, 32)
    assert torch.equal(enc.embed(x), loaded.embed(x))
    assert loaded.fingerprint() == enc.fingerprint()
    cfg = json.loads((tmp_path / "m" / "config.json").read_text())
    assert cfg["dim"] == 24 and cfg["fingerprint"] == enc.fingerprint()


def test_model_files_are_not_pickles(tmp_path):
    Encoder(EncoderConfig(dim=8, widths=(8,))).save(tmp_path)
    raw = (tmp_path / "model.safetensors").read_bytes()
    assert not raw.startswith(b"\x80") and b"PK\x03\x04" not in raw[:8]


def test_load_rejects_missing_or_damaged_model(tmp_path):
    with pytest.raises(ModelFormatError, match="not a megaclass model"):
        load_encoder(tmp_path)
    Encoder(EncoderConfig(dim=8, widths=(8,))).save(tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(ModelFormatError, match="cannot load weights"):
        load_encoder(tmp_path)


def test_embed_rejects_wrong_shape():
    with pytest.raises(InvalidInputError, match="expected images"):
        Encoder(EncoderConfig(dim=8, widths=(8,))).embed(torch.rand(2, 3, 32, 32))


@pytest.mark.parametrize("name", ["softmax", "normface", "cosface", "arcface"])
def test_heads_train_and_export_centres(name, tmp_path):
    torch.manual_seed(0)
    head = make_head(name, 6, 4)
    emb = F.normalize(torch.randn(60, 4), dim=1).requires_grad_()
    labels = torch.arange(60) % 6
    # plain softmax scales its (unit) inputs by s, so its weights need an lr about s^2 smaller
    opt = torch.optim.SGD(head.parameters(), lr=0.5 / head.scale**2 if name == "softmax" else 0.5)
    first = None
    for _ in range(30):
        loss = head(emb.detach(), labels)
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < first
    centres = head.class_centers()
    assert centres.shape == (6, 4)
    assert torch.allclose(centres.norm(dim=1), torch.ones(6), atol=1e-5)
    head.save(tmp_path)
    again = load_head(tmp_path)
    assert type(again) is type(head)
    assert torch.equal(again.class_centers(), centres)


def test_margins_lower_the_target_logit():
    cos = torch.tensor([[0.8, 0.1]])
    labels = torch.tensor([0])
    cf = CosFaceHead(2, 2, scale=1.0, margin=0.35)
    af = ArcFaceHead(2, 2, scale=1.0, margin=0.5)
    assert cf.margin_logits(cos, labels)[0, 0].item() == pytest.approx(0.45)
    assert af.margin_logits(cos, labels)[0, 0].item() == pytest.approx(
        torch.cos(torch.acos(torch.tensor(0.8)) + 0.5).item(), abs=1e-6)
    assert cf.margin_logits(cos, labels)[0, 1].item() == pytest.approx(0.1)


def test_head_bad_input():
    head = make_head("cosface", 5, 4)
    with pytest.raises(InvalidInputError, match=r"labels must lie in \[0, 5\)"):
        head(torch.randn(2, 4), torch.tensor([0, 7]))
    with pytest.raises(InvalidInputError, match="empty batch"):
        head(torch.randn(0, 4), torch.zeros(0, dtype=torch.long))
    with pytest.raises(InvalidInputError, match=r"\(B, 4\)"):
        head(torch.randn(2, 3), torch.tensor([0, 1]))
    with pytest.raises(ConfigError, match="unknown head"):
        make_head("nope", 5, 4)


def test_damaged_head_file_is_a_typed_error(tmp_path):
    make_head("cosface", 5, 4).save(tmp_path)
    (tmp_path / "head.safetensors").write_bytes(b"garbage")
    with pytest.raises(ModelFormatError, match="head.safetensors"):
        load_head(tmp_path)
