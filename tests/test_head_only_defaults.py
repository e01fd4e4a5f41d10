"""Issue 21 part 1: the head-only sweep's winners are the heads' defaults in `train` when only
the head trains (`freeze="all"`); end-to-end training keeps AdamW 3e-3."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from megaclass import GlyphSource
from megaclass.errors import ConfigError
from megaclass.heads.tuned import HEAD_ONLY, head_only_defaults
from megaclass.train import Trainer

TINY = {"dim": 16, "widths": (8, 16), "batch_size": 16, "m_per_class": 4, "progress": False}
DOCS = Path(__file__).resolve().parents[1] / "docs" / "bench" / "head_comparison.json"


def test_the_table_is_the_benchmarks_sweep_winners():
    sweep = json.loads(DOCS.read_text())["sweep"]
    assert set(sweep) == set(HEAD_ONLY)
    for head, entry in sweep.items():
        win = entry["winner"]
        assert HEAD_ONLY[head] == (win["optimizer"], win["lr"]), head
    assert head_only_defaults("ArcFace") == HEAD_ONLY["cosface"]


def _src():
    return GlyphSource(range(8), samples_per_class=8, size=16)


@pytest.mark.parametrize("head", ["cosface", "softmax", "partial_fc"])
def test_head_only_training_uses_the_heads_tuned_optimizer(head):
    trainer = Trainer(_src(), steps=2, head=head, freeze="all", **TINY)
    before = {k: v.clone() for k, v in trainer._build()[0].state_dict().items()}
    trainer = Trainer(_src(), steps=2, head=head, freeze="all", **TINY).fit()
    assert (trainer.config.optimizer, trainer.config.lr) == HEAD_ONLY[head]
    assert trainer.head_only
    after = trainer.encoder_.state_dict()  # the encoder did not move: only the head trained
    assert all(torch.equal(after[k], before[k]) for k in before if not k.endswith("num_batches_tracked"))


def test_given_settings_and_end_to_end_runs_keep_theirs():
    end_to_end = Trainer(_src(), steps=1, head="cosface", **TINY).fit()
    assert (end_to_end.config.optimizer, end_to_end.peak_lr) == ("adamw", 3e-3)
    part = Trainer(_src(), steps=1, head="cosface", freeze="stem,stage1", **TINY).fit()
    assert part.config.optimizer == "adamw" and not part.head_only
    later = Trainer(_src(), steps=1, head="cosface", freeze="all", unfreeze_after=1, **TINY).fit()
    assert later.config.optimizer == "adamw"  # the encoder trains from step 1 on
    own = Trainer(_src(), steps=1, head="cosface", freeze="all", lr=0.5, **TINY).fit()
    assert (own.config.optimizer, own.config.lr) == ("sgd", 0.5)
    chosen = Trainer(_src(), steps=1, head="cosface", freeze="all", optimizer="adamw", **TINY).fit()
    assert (chosen.config.optimizer, chosen.peak_lr) == ("adamw", 3e-3)


def test_freeze_all_next_to_a_wrong_stage_is_still_refused():
    with pytest.raises(ConfigError, match="stage9"):
        Trainer(_src(), steps=1, freeze="all,stage9", **TINY).fit()
