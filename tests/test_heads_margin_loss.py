"""The dense margin heads' fused loss equals the plain autograd margin softmax it replaced."""

import pytest
import torch
import torch.nn.functional as F

from megaclass.heads import LossReduction, make_head


def _reference(head, emb, labels):
    """The margin softmax through autograd over the full B x C logits (the old forward)."""
    return head.reduction(head.margin_logits(head.cosine(emb), labels), labels)


@pytest.mark.parametrize("name", ["cosface", "arcface", "normface"])
@pytest.mark.parametrize("weighted", [False, True])
def test_fused_dense_loss_equals_autograd_over_several_chunks(name, weighted):
    torch.manual_seed(0)
    c, d = 9000, 8                      # more rows than one chunk of the fused loss (8,192)
    reduction = LossReduction(class_weight=torch.rand(c) + 0.5) if weighted else None
    head = make_head(name, c, d, reduction=reduction)
    with torch.no_grad():
        head.weight.mul_(torch.rand(c, 1) * 3 + 0.1)   # rows of different norms
    emb = torch.randn(32, d)
    labels = torch.cat([torch.randint(0, 8192, (16,)), torch.randint(8192, c, (16,))])
    e1, e2 = emb.clone().requires_grad_(), emb.clone().requires_grad_()
    ref = _reference(head, e1, labels)
    ref.backward()
    g_ref, head.weight.grad = head.weight.grad.clone(), None
    fused = head(e2, labels)
    fused.backward()
    assert fused.item() == pytest.approx(ref.item(), rel=1e-5)
    scale = g_ref.abs().max().item()
    assert torch.allclose(head.weight.grad, g_ref, atol=1e-5 * scale, rtol=1e-4)
    assert torch.allclose(e2.grad, e1.grad, atol=1e-6, rtol=1e-4)


def test_frozen_features_train_the_head_without_an_embedding_gradient():
    torch.manual_seed(1)
    head = make_head("cosface", 100, 16)
    emb = F.normalize(torch.randn(8, 16), dim=1)          # no requires_grad: head-only training
    labels = torch.randint(0, 100, (8,))
    head(emb, labels).backward()
    g = head.weight.grad.clone()
    head.weight.grad = None
    _reference(head, emb, labels).backward()
    assert torch.allclose(g, head.weight.grad, atol=1e-6, rtol=1e-4)


def test_focal_and_learned_scale_keep_the_autograd_path():
    torch.manual_seed(2)
    emb, labels = torch.randn(8, 16), torch.randint(0, 50, (8,))
    focal = make_head("cosface", 50, 16, reduction=LossReduction(focal_gamma=2.0))
    assert focal(emb, labels).item() == pytest.approx(_reference(focal, emb, labels).item(), rel=1e-6)
    learned = make_head("cosface", 50, 16, learn_scale=True)
    learned(emb, labels).backward()
    assert learned.s.log_s.grad is not None             # the scale still learns


def test_hierarchical_own_group_cosines_equal_the_per_sample_gather():
    """The batched-by-group cosines of the hierarchical head (raw rows, hand-written backward)
    equal gathering each sample's group rows and normalising them (the old formulation), in
    value and in gradient, with groups of uneven counts and rows of uneven norms; in double
    precision so that the check is tight, and through torch's own gradient checker."""
    from megaclass.heads.hierarchical import _OwnGroupCosines

    torch.manual_seed(3)
    u, smax, d = 5, 7, 6
    w1 = (torch.randn(u, smax, d, dtype=torch.float64) * torch.rand(u, smax, 1) * 3).requires_grad_()
    w2 = w1.detach().clone().requires_grad_()
    inv = torch.tensor([0, 3, 3, 1, 0, 0, 4, 2, 3, 0])      # samples per group: 4, 1, 1, 3, 1
    e1 = F.normalize(torch.randn(len(inv), d, dtype=torch.float64), dim=1).requires_grad_()
    e2 = e1.detach().clone().requires_grad_()
    ref = torch.einsum("bd,bsd->bs", e1, F.normalize(w1, dim=2)[inv])
    got = _OwnGroupCosines.apply(e2, w2, inv)
    assert torch.allclose(got, ref, atol=1e-12)
    g = torch.randn_like(ref)
    ref.backward(g)
    got.backward(g)
    assert torch.allclose(w2.grad, w1.grad, atol=1e-10) and torch.allclose(e2.grad, e1.grad, atol=1e-10)
    assert torch.autograd.gradcheck(lambda e, w: _OwnGroupCosines.apply(e, w, inv),
                                    (e1.detach().requires_grad_(), w1.detach().requires_grad_()))


@pytest.mark.parametrize("uneven", [False, True])
def test_hierarchical_loss_equals_the_two_level_cosine_softmax_written_out(uneven):
    """The hierarchical head's loss (raw rows scaled by their inverse norms, batched by group)
    equals group CE + in-group CE over normalised rows, computed directly; so do the gradients.
    With groups of unequal size the padding slots (which read row 0) get no gradient and the
    row-wise step updates each real row once, as a dense SGD step on the same loss would."""
    from megaclass.heads.hierarchical import HierarchicalHead

    torch.manual_seed(4)
    c, d = 60, 8
    groups = None
    if uneven:  # class 0 in a small group, so padding slots and a real row 0 meet in one batch
        groups = torch.cat([torch.zeros(3), torch.ones(20), torch.full((37,), 2)]).long()
    head = HierarchicalHead(c, d, num_groups=6, margin=0.2, groups=groups, optimizer="sgd", momentum=0.0)
    with torch.no_grad():
        head.weight.mul_(torch.rand(c, 1) * 3 + 0.1)
    labels = torch.tensor([0, 0, 13, 13, 59, 59, 31, 31, 32, 32])
    e = torch.randn(len(labels), d, requires_grad=True)
    loss = head(e, labels)
    loss.backward()
    g_e, index, leaf = e.grad.clone(), *head._pending
    e2 = e.detach().clone().requires_grad_()
    w = head.weight.clone().requires_grad_()
    en = F.normalize(e2, dim=1)
    s = head.s()
    groups = head.group_of[labels]
    ref = F.cross_entropy(s * en @ F.normalize(head.group_weight, dim=1).t(), groups)
    wn = F.normalize(w, dim=1)
    for b, y in enumerate(labels.tolist()):
        members = (head.group_of == groups[b]).nonzero().squeeze(1)
        cos = wn[members] @ en[b]
        cos = torch.where(members == y, cos - head.margin, cos)
        ref = ref + F.cross_entropy((s * cos)[None], (members == y).nonzero()[0]) / len(labels)
    ref.backward()
    assert loss.item() == pytest.approx(ref.item(), rel=1e-5)
    assert torch.allclose(g_e, e2.grad, atol=1e-5)
    real = index >= 0
    grad = leaf.grad.view(index.numel(), d)
    assert bool(real.all()) != uneven
    assert torch.allclose(grad[real], w.grad[index[real]], atol=1e-5)
    assert not grad[~real].any()
    before = head.weight.clone()
    head.sparse_step(0.5)
    assert torch.allclose(head.weight, before - 0.5 * w.grad, atol=1e-6)
