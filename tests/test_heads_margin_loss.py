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
