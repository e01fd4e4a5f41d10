import pytest
import torch

from megaclass import GlyphSource, Trainer
from megaclass.errors import ConfigError
from megaclass.train import latest_checkpoint

TINY = dict(batch_size=32, dim=16, widths=(8, 16), progress=False, num_workers=0)


def test_training_is_deterministic_on_cpu():
    src = GlyphSource(range(20), samples_per_class=8)
    a = Trainer(src, head="arcface", steps=4, seed=3, **TINY)
    b = Trainer(src, head="arcface", steps=4, seed=3, **TINY)
    ea, eb = a.fit().encoder_, b.fit().encoder_
    assert [h["loss"] for h in a.history_] == [h["loss"] for h in b.history_]
    x = GlyphSource.samples(1, n=2)
    assert torch.equal(ea.embed(x), eb.embed(x))


def test_resume_continues_exactly(tmp_path):
    src = GlyphSource(range(20), samples_per_class=8)
    full = Trainer(src, steps=6, seed=1, **TINY)
    full.fit()
    first = Trainer(src, steps=6, seed=1, checkpoint_dir=str(tmp_path), checkpoint_every=3, **TINY)
    first.fit()
    ckpt = latest_checkpoint(tmp_path)
    assert ckpt is not None and ckpt.name == "step-00000006"
    # remove the final checkpoint and resume from step 3
    import shutil

    shutil.rmtree(ckpt)
    (tmp_path / "latest").write_text("step-00000003")
    resumed = Trainer(src, steps=6, seed=1, checkpoint_dir=str(tmp_path), resume=True, **TINY)
    enc = resumed.fit().encoder_
    assert [h["loss"] for h in resumed.history_] == pytest.approx(
        [h["loss"] for h in full.history_], abs=1e-4)
    x = GlyphSource.samples(2, n=2)
    assert torch.allclose(enc.embed(x), full.encoder_.embed(x), atol=1e-4)


def test_head_export_to_gallery(tmp_path):
    from megaclass.gallery import Gallery

    src = GlyphSource(range(12), samples_per_class=8)
    t = Trainer(src, head="cosface", steps=3, **TINY)
    t.fit()
    centres = t.head_.class_centers()
    assert centres.shape == (12, 16)
    with Gallery.open(tmp_path / "g", dim=16) as g:
        g.enroll_many((name, centres[i : i + 1]) for i, name in enumerate(src.class_names))
        top = g.search(centres[5:6].numpy(), k=1)[0][0]
    assert top.label == src.class_names[5] and top.score == pytest.approx(1.0, abs=1e-5)


def test_bad_training_options():
    src = GlyphSource(range(5), samples_per_class=4)
    with pytest.raises(ConfigError, match="multiple of m_per_class"):
        Trainer(src, batch_size=30, m_per_class=4)
    with pytest.raises(ConfigError, match="unknown training options"):
        Trainer(src, learning_rate=1)
    with pytest.raises(ConfigError, match="unknown head"):
        Trainer(src, head="nope", steps=1, **TINY).fit()
    with pytest.raises(ConfigError, match="resume needs"):
        Trainer(src, resume=True)


def test_trainer_copies_its_config_and_fit_returns_the_trainer():
    from megaclass.train import TrainConfig

    cfg = TrainConfig(head="cosface", freeze="", head_options={"scale": 8.0}, **TINY)
    t = Trainer(GlyphSource(range(6), samples_per_class=4), cfg, steps=2, seed=4)
    assert cfg.steps is None and cfg.seed == 0 and cfg.freeze == ""      # the caller's config is untouched
    assert t.config is not cfg and t.config.steps == 2 and t.config.freeze == ()
    t.config.head_options["scale"] = 1.0
    assert cfg.head_options == {"scale": 8.0}                             # a deep copy
    assert t.fit() is t and t.encoder_.dim == 16 and len(t.history_) == 2
    with pytest.raises(ConfigError, match="config must be a TrainConfig"):
        Trainer(GlyphSource(range(6), samples_per_class=4), {"steps": 2})
