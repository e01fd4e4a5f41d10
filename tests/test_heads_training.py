"""End-to-end training per head (tiny sizes), save/load round trips, export to a gallery."""

import json

import pytest
import torch
import torch.nn.functional as F

from megaclass import GlyphSource, Trainer
from megaclass.errors import ConfigError
from megaclass.heads import HEADS, LossReduction, load_head, make_head
from megaclass.train import latest_checkpoint

TINY = dict(batch_size=32, dim=16, widths=(8, 16), progress=False, num_workers=0)
NEW_HEADS = ["partial_fc", "adaptive", "hierarchical", "triplet"]


@pytest.mark.parametrize("name", NEW_HEADS)
def test_each_head_trains_end_to_end_and_round_trips(name, tmp_path):
    src = GlyphSource(range(24), samples_per_class=8)
    opts = {"sample_rate": 0.5} if name == "partial_fc" else {}
    t = Trainer(src, head=name, steps=4, head_options=opts, **TINY)
    t.fit()
    assert len(t.history_) == 4 and all(torch.isfinite(torch.tensor(h["loss"])) for h in t.history_)
    head = t.head_
    emb = t.encoder_.embed(GlyphSource.samples(3, n=2, seed=5))
    scores, ids = head.predict(emb, k=3)
    assert ids.shape == (2, 3) and int(ids.max()) < 24
    head.save(tmp_path / "h")
    again = load_head(tmp_path / "h")
    assert type(again) is type(head)
    again.eval()
    head.eval()
    assert torch.equal(again.predict(emb, k=3)[1], head.predict(emb, k=3)[1])
    centres = head.class_centers()
    if name != "adaptive":
        assert centres.shape == (24, 16)


def test_partial_fc_trainer_sgd_bf16_and_resume(tmp_path):
    src = GlyphSource(range(30), samples_per_class=8)
    opts = {"sample_rate": 0.2, "dtype": "bfloat16"}
    ck = tmp_path / "ck"
    full = Trainer(src, head="partial_fc", steps=4, optimizer="sgd", head_options=opts, **TINY)
    full.fit()
    assert full.head_.optimizer == "sgd" and full.head_.weight.dtype == torch.bfloat16
    part = Trainer(src, head="partial_fc", steps=2, optimizer="sgd", head_options=opts,
                   checkpoint_dir=str(ck), **TINY)
    part.fit()
    assert latest_checkpoint(ck) is not None
    rest = Trainer(src, head="partial_fc", steps=4, optimizer="sgd", head_options=opts,
                   checkpoint_dir=str(ck), resume=True, **TINY)
    rest.fit()
    assert [h["loss"] for h in rest.history_] == [h["loss"] for h in full.history_]
    assert torch.equal(rest.head_.weight, full.head_.weight)


def test_focal_and_class_balanced_options():
    labels = [0] * 20 + [1] * 4 + list(range(2, 12)) * 2
    from megaclass.data import ArraySource

    src = ArraySource(torch.rand(len(labels), 1, 32, 32), labels)
    t = Trainer(src, head="cosface", steps=2, focal_gamma=2.0, class_balanced=True, m_per_class=2, **TINY)
    t.fit()
    weight = t.head_.reduction.class_weight
    assert t.head_.reduction.focal_gamma == 2.0 and weight[0] < weight[1]
    with pytest.raises(ConfigError, match="no softmax loss"):
        Trainer(src, head="triplet", steps=1, focal_gamma=1.0, m_per_class=2, **TINY).fit()
    with pytest.raises(ConfigError, match="unknown head"):
        Trainer(src, head="nope")


def test_focal_loss_downweights_easy_samples():
    head = make_head("cosface", 4, 3, scale=10.0, margin=0.0)
    emb = F.normalize(head.weight.detach()[:2], dim=1)
    labels = torch.tensor([0, 1])
    plain = head(emb, labels).item()
    head.reduction = LossReduction(focal_gamma=2.0)
    assert head(emb, labels).item() < plain
    with pytest.raises(ConfigError, match="focal_gamma must be >= 0"):
        LossReduction(focal_gamma=-1.0)
    with pytest.raises(ConfigError, match="class_weight needs 4 entries"):
        make_head("cosface", 4, 3, reduction=LossReduction(class_weight=torch.ones(3)))
    with pytest.raises(ConfigError, match="no softmax loss"):
        make_head("adaptive", 4, 3, reduction=LossReduction(focal_gamma=1.0))


def test_hierarchical_groups_beam_and_taxonomy(tmp_path):
    from megaclass.heads import HierarchicalHead, TaxonomyError

    torch.manual_seed(0)
    head = HierarchicalHead(20, 8, num_groups=4, beam=4)
    emb = torch.randn(5, 8)
    full = head.logits(emb)
    assert torch.allclose(full.exp().sum(1), torch.ones(5), atol=1e-4)     # a distribution
    best, ids = head.predict(emb, k=2, rank="joint")                         # beam = all groups
    assert torch.equal(ids, full.topk(2, dim=1).indices)
    assert torch.allclose(best, full.topk(2, dim=1).values, atol=1e-4)
    names = [f"c{i}" for i in range(6)]
    tax = tmp_path / "tax.json"
    tax.write_text(json.dumps({"c0": ["animal", "bird"], "c1": "animal/bird", "c2": "plant",
                               "c3": "plant", "c4": "rock", "c5": "rock"}))
    h = HierarchicalHead(6, 4, taxonomy=tax, class_names=names)
    assert h.group_names == ["animal/bird", "plant", "rock"] and h.group_of.tolist() == [0, 0, 1, 1, 2, 2]
    csv = tmp_path / "tax.csv"
    csv.write_text("class,group\nc0,a\nc1,a\nc2,b\nc3,b\nc4,b\n")
    with pytest.raises(TaxonomyError, match="without a group"):
        HierarchicalHead(6, 4, taxonomy=csv, class_names=names)
    csv.write_text("c0,a\nc1,a\nc2,b\nc3,b\nc4,b\nc5,b\nzz,b\n")
    with pytest.raises(TaxonomyError, match="unknown classes"):
        HierarchicalHead(6, 4, taxonomy=csv, class_names=names)
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(TaxonomyError, match="not valid JSON"):
        HierarchicalHead(6, 4, taxonomy=bad, class_names=names)
    km = HierarchicalHead(40, 8, centers=torch.randn(40, 8), num_groups=5)
    assert km.num_groups == 5


def test_triplet_minings_and_adaptive_skew():
    from megaclass.heads import AdaptiveHead, TripletHead

    torch.manual_seed(0)
    labels = torch.arange(8).repeat_interleave(2)
    for mining in ("batch_hard", "semihard", "cluster"):
        head = TripletHead(8, 6, mining=mining, recluster_every=1, num_clusters=2)
        for _ in range(3):
            loss = head(torch.randn(16, 6), labels)
        assert loss.ndim == 0
    assert int(head.cluster_of.max()) >= 0
    with pytest.raises(ConfigError, match="two samples"):
        TripletHead(8, 6)(torch.randn(4, 6), torch.arange(4))
    counts = torch.tensor([1000, 1, 500, 2, 3, 4, 5, 6])
    head = AdaptiveHead(8, 16, class_counts=counts)
    assert head.rank[0] == 0 and head.rank[2] == 1
    with pytest.raises(ConfigError, match="cutoffs"):
        AdaptiveHead(8, 16, cutoffs=[9])


def test_every_head_is_registered():
    assert set(NEW_HEADS) <= set(HEADS)
