"""Issue 21: every softmax-family head has a scale; the hierarchical head updates rows sparsely;
the comparison protocol itself runs in tests/test_heads_cli_bench.py (bench heads --quick)."""

import pytest
import torch
import torch.nn.functional as F

from megaclass.errors import ConfigError
from megaclass.heads import load_head, make_head


@pytest.mark.parametrize("name", ["softmax", "cosface", "adaptive", "hierarchical"])
def test_learned_scale_trains_and_round_trips(name, tmp_path):
    torch.manual_seed(0)
    head = make_head(name, 8, 16, scale=4.0, learn_scale=True)
    assert [n for n, _ in head.named_parameters() if n.endswith("log_s")] == ["s.log_s"]
    emb, labels = F.normalize(torch.randn(64, 16), dim=1), torch.arange(64) % 8
    opt = torch.optim.SGD(head.parameters(), lr=0.05)
    for _ in range(20):
        loss = head(emb, labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
        head.sparse_step(0.05)
    assert head.s.current() != pytest.approx(4.0)          # the scale moved with training
    head.save(tmp_path)
    again = load_head(tmp_path)
    assert again.s.learn and again.s.current() == pytest.approx(head.s.current())
    head.eval(), again.eval()
    assert torch.equal(again.predict(emb, k=2)[1], head.predict(emb, k=2)[1])


def test_scale_must_be_positive():
    with pytest.raises(ConfigError, match="scale must be a positive number"):
        make_head("softmax", 4, 3, scale=0.0)


def test_softmax_scale_speeds_up_learning_on_unit_embeddings():
    torch.manual_seed(0)
    emb, labels = F.normalize(torch.randn(200, 16), dim=1), torch.arange(200) % 50
    losses = {}
    for s in (1.0, 16.0):                           # the scale is applied: same lr, faster learning
        head = make_head("softmax", 50, 16, scale=s)
        opt = torch.optim.SGD(head.parameters(), lr=0.01, momentum=0.9)
        for _ in range(50):
            loss = head(emb, labels)
            opt.zero_grad()
            loss.backward()
            opt.step()
        losses[s] = loss.item()
    assert losses[16.0] < losses[1.0] - 1.0


def test_hierarchical_rows_are_sparse_state_updated_only_where_used():
    torch.manual_seed(0)
    head = make_head("hierarchical", 100, 8, num_groups=10, optimizer="sgd")
    dense = [n for n, p in head.named_parameters() if p.shape[0] == 100]
    assert dense == []                                      # no C x D parameter, no dense gradient
    before = head.weight.clone()
    labels = torch.tensor([0, 1, 2, 3])                     # all in group 0 (classes 0-9)
    head(F.normalize(torch.randn(4, 8), dim=1), labels).backward()
    head.sparse_step(0.1)
    changed = (head.weight != before).any(dim=1).nonzero().flatten().tolist()
    assert changed and set(changed) <= set(range(10))
    assert int(head.step_count) == 1 and head.momentum_buffer[50].abs().sum() == 0


def test_hierarchical_head_saved_without_row_state_still_loads(tmp_path):
    head = make_head("hierarchical", 20, 4, num_groups=4)
    head.save(tmp_path)
    from safetensors.torch import load_file, save_file

    state = load_file(str(tmp_path / "head.safetensors"))
    old = {k: v for k, v in state.items() if k not in ("momentum_buffer", "step_count")}
    save_file(old, str(tmp_path / "head.safetensors"))
    again = load_head(tmp_path)
    assert torch.equal(again.weight, head.weight)


def test_hierarchical_ranks_the_beams_classes_by_their_own_score():
    """rank="class" (default) orders the beam's classes by their cosine, not by P(group) P(class|group)."""
    torch.manual_seed(0)
    head = make_head("hierarchical", 40, 8, num_groups=4, beam=4)       # beam = every group
    emb = F.normalize(torch.randn(6, 8), dim=1)
    cos = emb @ F.normalize(head.weight, dim=1).t()
    assert torch.equal(head.predict(emb, k=3)[1], cos.topk(3, dim=1).indices)
    assert torch.equal(head.predict(emb, k=3, rank="joint")[1], head.logits(emb).topk(3, dim=1).indices)
    assert head.rank == "class" and head.hparams()["rank"] == "class"
    with pytest.raises(ConfigError, match="rank must be"):
        make_head("hierarchical", 40, 8, rank="nope")


@pytest.mark.parametrize("clock", ["wall", "cpu"])
def test_head_budget_clock_counts_cpu_time_only_when_asked(clock, tmp_path, monkeypatch):
    """clock="cpu" budgets a head's training in its own CPU seconds: time the worker spends
    off the CPU (here a sleep standing in for other processes on a shared box) is not counted."""
    import json
    import time

    import numpy as np

    from megaclass.bench import heads, heads_accuracy

    c, d, per = 8, 16, {"train": 6, "val": 1, "test": 2}
    rng = np.random.default_rng(0)
    for split, n in per.items():
        np.save(tmp_path / f"{split}_x.npy", rng.standard_normal((c * n, d)).astype(np.float32))
    (tmp_path / "meta.json").write_text(json.dumps({"per_split": per, "classes": c, "done": c}))
    real_step = heads.train_step

    def slow_step(*args):
        time.sleep(0.2)
        return real_step(*args)

    monkeypatch.setattr(heads, "train_step", slow_step)
    res = heads_accuracy.train_worker({
        "features": str(tmp_path), "classes": c, "head": "cosface", "optimizer": "sgd", "lr": 0.1,
        "batch": 16, "max_steps": 6, "eval_every": 3, "patience": 10, "max_seconds": 1e9, "min_gain": 0.0,
        "val_samples": 8, "test_samples": 16, "clock": clock})
    assert res["clock"] == clock and res["steps"] == 6
    if clock == "wall":
        assert res["train_seconds"] >= 6 * 0.2
    else:
        assert res["train_seconds"] < 6 * 0.2 / 2
