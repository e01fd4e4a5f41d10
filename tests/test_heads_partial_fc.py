import pytest
import torch
import torch.nn.functional as F

from megaclass.errors import ConfigError, InvalidInputError
from megaclass.heads import (
    ArcFaceHead,
    ArcFaceMargin,
    CosFaceHead,
    CosFaceMargin,
    LossReduction,
    MarginSoftmaxHead,
    load_head,
    make_head,
)
from megaclass.heads.base import InsufficientMemoryError
from megaclass.heads.partial_fc import PartialFCHead


def _pair(margin_type, c=50, d=12):
    torch.manual_seed(0)
    dense = (CosFaceHead if margin_type == "cosface" else ArcFaceHead)(c, d)
    pfc = PartialFCHead(c, d, sample_rate=1.0, margin_type=margin_type, weight_decay=0.0)
    pfc.weight.copy_(dense.weight.detach())
    return dense, pfc


@pytest.mark.parametrize("margin_type", ["cosface", "arcface"])
def test_rate_one_equals_full_margin_softmax(margin_type):
    dense, pfc = _pair(margin_type)
    emb = torch.randn(16, 12)
    labels = torch.randint(0, 50, (16,))
    e1 = emb.clone().requires_grad_()
    e2 = emb.clone().requires_grad_()
    l1 = dense(e1, labels)
    l2 = pfc(e2, labels)
    l1.backward()
    l2.backward()
    assert l2.item() == pytest.approx(l1.item(), rel=1e-5, abs=1e-6)
    assert torch.allclose(e1.grad, e2.grad, atol=1e-6, rtol=1e-4)
    index, rows = pfc._pending
    assert index.numel() == 50
    ref = dense.weight.grad[index]
    assert torch.allclose(ref, rows.grad, atol=1e-6 * ref.abs().max().item(), rtol=1e-4)


def test_rate_one_update_equals_dense_sgd():
    dense, pfc = _pair("cosface")
    opt = torch.optim.SGD(dense.parameters(), lr=0.01, momentum=0.9, nesterov=True)
    for _ in range(3):
        emb = torch.randn(16, 12)
        labels = torch.randint(0, 50, (16,))
        opt.zero_grad()
        dense(emb, labels).backward()
        opt.step()
        pfc(emb, labels).backward()
        pfc.sparse_step(0.01)
    assert torch.allclose(dense.weight.detach(), pfc.weight, atol=1e-5, rtol=1e-4)


def test_sampling_keeps_positives_and_rate():
    head = PartialFCHead(1000, 8, sample_rate=0.1)
    labels = torch.tensor([3, 3, 999, 500])
    index, targets = head.sample(labels)
    assert index.numel() == 100 and index.unique().numel() == 100
    assert torch.equal(index[targets], labels)
    many = torch.arange(300)
    index, _ = head.sample(many)
    assert index.numel() == 300  # more positives than the sample: all of them


@pytest.mark.parametrize("optimizer,dtype", [("sgd", "float32"), ("adam", "bfloat16")])
def test_only_sampled_rows_change(optimizer, dtype):
    torch.manual_seed(1)
    head = PartialFCHead(2000, 8, sample_rate=0.05, optimizer=optimizer, dtype=dtype)
    before = head.weight.clone()
    head(torch.randn(4, 8), torch.tensor([1, 2, 3, 4])).backward()
    index = head._pending[0]
    head.sparse_step(0.1)
    changed = (head.weight != before).any(dim=1).nonzero().squeeze(1)
    assert set(changed.tolist()) <= set(index.tolist()) and changed.numel() > 0
    assert head.weight.dtype == (torch.bfloat16 if dtype == "bfloat16" else torch.float32)


def test_pfc_learns_and_round_trips(tmp_path):
    torch.manual_seed(0)
    head = PartialFCHead(40, 8, sample_rate=0.3, dtype="bfloat16", optimizer="adam")
    protos = F.normalize(torch.randn(40, 8), dim=1)
    labels = torch.arange(40).repeat(2)
    emb = protos[labels] + 0.05 * torch.randn(80, 8)
    first = None
    for _ in range(60):
        loss = head(emb, labels)
        first = first if first is not None else loss.item()
        loss.backward()
        head.sparse_step(0.05)
    assert loss.item() < first
    head.eval()
    assert (head.predict(emb, k=1)[1].squeeze(1) == labels).float().mean() > 0.9
    head.save(tmp_path)
    again = load_head(tmp_path)
    assert isinstance(again, PartialFCHead) and again.dtype_name == "bfloat16"
    assert torch.equal(again.weight, head.weight) and torch.equal(again.exp_avg, head.exp_avg)
    assert torch.equal(again.class_centers(), head.class_centers())


def test_focal_and_class_weights_run():
    head = PartialFCHead(30, 8, sample_rate=0.5, reduction=LossReduction(focal_gamma=2.0))
    head(torch.randn(6, 8), torch.arange(6)).backward()
    head = PartialFCHead(30, 8, sample_rate=0.5, reduction=LossReduction(class_weight=torch.rand(30) + 0.1))
    head(torch.randn(6, 8), torch.arange(6)).backward()
    assert head._pending[1].grad is not None


@pytest.mark.parametrize("reduction", [LossReduction(focal_gamma=2.0),
                                       LossReduction(class_weight=torch.arange(1.0, 51.0))])
def test_rate_one_equals_dense_head_with_the_same_reduction(reduction):
    """The reduction is a part both heads take: focal loss (plain autograd path) and class
    weights (the fused loss's per-sample weights) give the dense head's loss and gradient."""
    dense, pfc = _pair("arcface")
    dense.reduction = pfc.reduction = reduction
    emb = torch.randn(16, 12)
    labels = torch.randint(0, 50, (16,))
    e1, e2 = emb.clone().requires_grad_(), emb.clone().requires_grad_()
    l1, l2 = dense(e1, labels), pfc(e2, labels)
    l1.backward()
    l2.backward()
    assert l2.item() == pytest.approx(l1.item(), rel=1e-5, abs=1e-6)
    assert torch.allclose(e1.grad, e2.grad, atol=1e-6, rtol=1e-4)


def test_margin_is_a_part_given_to_both_heads(tmp_path):
    """One margin object serves the dense head and Partial FC (rate 1: the same loss), and a
    head saves it as margin_type + margin, so it loads back with the same margin."""
    torch.manual_seed(0)
    margin = ArcFaceMargin(0.3)
    dense = MarginSoftmaxHead(40, 8, margin=margin)
    pfc = PartialFCHead(40, 8, sample_rate=1.0, margin=margin, weight_decay=0.0)
    pfc.weight.copy_(dense.weight.detach())
    emb, labels = torch.randn(10, 8), torch.randint(0, 40, (10,))
    assert pfc(emb, labels).item() == pytest.approx(dense(emb, labels).item(), rel=1e-5)
    assert pfc.margin_type == dense.margin_fn.name == "arcface" and pfc.margin == 0.3
    dense.save(tmp_path / "dense")
    pfc.save(tmp_path / "pfc")
    for again in (load_head(tmp_path / "dense"), load_head(tmp_path / "pfc")):
        assert isinstance(again.margin_fn, ArcFaceMargin) and again.margin_fn.m == 0.3
    with pytest.raises(ConfigError, match="contradicts"):
        PartialFCHead(40, 8, margin=margin, margin_type="cosface")
    with pytest.raises(ConfigError, match="margin_type must be one of"):
        make_head("partial_fc", 40, 8, margin_type="sphereface")


def test_head_files_from_before_margins_were_parts_still_load(tmp_path):
    """head.json written before margin_type was saved for dense heads (and with the old key
    order for Partial FC) loads with the class's own margin."""
    import json

    for name, hparams, kind in [
        ("cosface", {"scale": 30.0, "margin": 0.2, "learn_scale": False}, CosFaceMargin),
        ("arcface", {"scale": 30.0, "margin": 0.5, "learn_scale": False}, ArcFaceMargin),
        ("partial_fc", {"sample_rate": 0.5, "margin_type": "arcface", "scale": 30.0, "margin": 0.4,
                        "dtype": "float32", "optimizer": "sgd", "momentum": 0.9,
                        "weight_decay": 0.0005}, ArcFaceMargin),
    ]:
        head = make_head(name, 6, 4, **hparams)
        head.save(tmp_path / name)
        (tmp_path / name / "head.json").write_text(json.dumps(
            {"kind": "megaclass.head", "name": name, "num_classes": 6, "dim": 4, "hparams": hparams}))
        again = load_head(tmp_path / name)
        assert type(again.margin_fn) is kind and again.margin == hparams["margin"]
        assert torch.equal(again.class_centers(), head.class_centers())


def test_bad_input():
    with pytest.raises(ConfigError, match="sample_rate"):
        PartialFCHead(10, 4, sample_rate=0.0)
    with pytest.raises(ConfigError, match="sample_rate"):
        make_head("partial_fc", 10, 4, sample_rate=1.5)
    with pytest.raises(InsufficientMemoryError, match="GiB"):
        PartialFCHead(10**12, 256)
    head = PartialFCHead(10, 4)
    with pytest.raises(InvalidInputError, match="labels must lie"):
        head(torch.randn(2, 4), torch.tensor([0, 10]))
    with pytest.raises(InvalidInputError, match="empty batch"):
        head(torch.randn(0, 4), torch.zeros(0, dtype=torch.int64))


@pytest.mark.parametrize("kind,dtype", [("sgd", torch.float32), ("adam", torch.float32),
                                        ("sgd", torch.bfloat16)])
def test_rowwise_step_with_rows_already_read_equals_the_gather(kind, dtype):
    from megaclass.heads.rowwise import make_state, rowwise_step

    torch.manual_seed(0)
    w1 = torch.randn(40, 6).to(dtype)
    w2 = w1.clone()
    s1, s2 = make_state(w1, kind, torch.float32), make_state(w2, kind, torch.float32)
    for step in (1, 2):
        idx = torch.randperm(40)[:9]
        grad = torch.randn(9, 6)
        rowwise_step(w1, s1, idx, grad, lr=0.1, kind=kind, weight_decay=0.01, step=step)
        current = w2.index_select(0, idx).float()
        rowwise_step(w2, s2, idx, grad, lr=0.1, kind=kind, weight_decay=0.01, step=step, current=current)
    assert torch.equal(w1, w2) and all(torch.equal(s1[k], s2[k]) for k in s1)
    with pytest.raises(ValueError, match="current rows have shape"):
        rowwise_step(w2, s2, idx, grad, lr=0.1, kind=kind, current=current[:3])
