"""Training recipes (`train --recipe`), devices/precision, the open-set protocol and `bench recipe`."""

import json

import pytest
import torch
from typer.testing import CliRunner

from megaclass import cli
from megaclass.data.glyphs import GlyphSource
from megaclass.errors import ConfigError
from megaclass.evaluate.protocol import OpenSetProtocol, score_encoder
from megaclass.models import Encoder, EncoderConfig
from megaclass.train import Trainer
from megaclass.train.device import resolve_device
from megaclass.train.recipes import RECIPES, recipe


def test_recipe_gives_data_and_options_and_the_command_line_overrides(tmp_path):
    out = tmp_path / "m"
    r = CliRunner().invoke(cli.app, ["train", "--recipe", "demo", "-m", str(out), "--steps", "2",
                                     "--batch-size", "32", "--json"])
    assert r.exit_code == 0, r.output
    result = json.loads(r.stdout)
    assert result["classes"] == 2000  # the recipe's data: glyphs:0-2000
    assert result["steps"] == 2  # given on the command line: overrides the recipe's 520
    trained = json.loads((out / "config.json").read_text())["extra"]["trained_with"]
    assert trained["batch_size"] == 32 and trained["head"] == "cosface"
    # not given on the command line: the recipe's own (CosFace s=16 m=0.2, not the head's 30/0.35)
    assert trained["scale"] == 16.0 and trained["margin"] == 0.2


@pytest.mark.parametrize("name, dim, widths", [("reference", 256, [48, 96, 192]),
                                                ("reference-v2", 256, [48, 96, 192]),
                                                ("reference-v1", 128, [32, 64, 128])])
def test_the_reference_recipes_build_the_shipped_models_architectures(tmp_path, name, dim, widths):
    """`train --recipe reference` reproduces the shipped `reference` (its card's command), and
    `reference-v2` and `reference-v1` the earlier versions: same architecture, dim and
    training data."""
    from megaclass.models.pretrained import shipped_dir

    out = tmp_path / "m"
    r = CliRunner().invoke(cli.app, ["train", "--recipe", name, "-m", str(out), "--steps", "1",
                                     "--batch-size", "32", "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["classes"] == 20000
    made = json.loads((out / "config.json").read_text())
    shipped = json.loads((shipped_dir(name) / "config.json").read_text())
    for key in ("dim", "widths", "blocks", "stem_stride", "input_size"):
        assert made[key] == shipped[key], key
    assert made["dim"] == dim and made["widths"] == widths


def test_recipe_errors_name_the_problem(tmp_path):
    runner = CliRunner()
    # (main() turns a ConfigError into one line on stderr and exit 2; CliRunner keeps the exception)
    r = runner.invoke(cli.app, ["train", "--recipe", "nope", "-m", str(tmp_path / "m")])
    assert isinstance(r.exception, ConfigError)
    assert "choose one of demo, reference, reference-v1, reference-v2" in str(r.exception)
    r = runner.invoke(cli.app, ["train", "-m", str(tmp_path / "m")])
    assert isinstance(r.exception, ConfigError) and "--recipe" in str(r.exception)
    assert not (tmp_path / "m").exists()
    with pytest.raises(ConfigError, match="unknown recipe"):
        recipe("nope")
    assert set(RECIPES) >= {"demo", "reference"}


def test_devices_are_checked_before_training():
    assert resolve_device("cpu").type == "cpu"
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ConfigError, match="unknown device"):
        resolve_device("gpu0")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="no CUDA GPU"):
            Trainer(GlyphSource(4, samples_per_class=2), device="cuda", steps=1)
    with pytest.raises(ConfigError, match="precision"):
        Trainer(GlyphSource(4, samples_per_class=2), precision="fp8", steps=1)


def test_bf16_autocast_trains_and_the_model_comes_back_float32_on_cpu():
    t = Trainer(GlyphSource(8, samples_per_class=4), precision="bf16", steps=2, batch_size=16,
                dim=16, widths=(8, 16), progress=False)
    enc = t.fit().encoder_
    assert all(p.dtype == torch.float32 and p.device.type == "cpu" for p in enc.parameters())
    assert all(torch.isfinite(torch.tensor(h["loss"])) for h in t.history_)


def test_protocol_is_deterministic_and_separates_a_trained_model_from_an_untrained_one():
    p = OpenSetProtocol(enrolled=40, per_class=3, non_mated=40).render()
    untrained = Encoder(EncoderConfig(dim=32, widths=(8, 16)))
    a, b = score_encoder(untrained, p), score_encoder(untrained, p)
    assert a == b
    src = GlyphSource(60, samples_per_class=16)
    trained = Trainer(src, scale=16.0, margin=0.2, steps=150, batch_size=64, dim=32, widths=(8, 16),
                      progress=False).fit().encoder_
    t = score_encoder(trained, p)
    assert t["top1"] > a["top1"] + 0.15 and t["top5"] > a["top5"] + 0.2, (t, a)
    assert set(t) == {"top1", "top5", "threshold", "fpir", "fnir", "fnir_at_extra_fpir",
                      "fpir_cohort", "fnir_cohort", "fnir_at_extra_fpir_cohort"}  # the cohort rule too


def test_bench_recipe_measures_variants_and_resumes(tmp_path):
    cli._register_area_commands()
    args = ["bench", "recipe", "--out", str(tmp_path), "--steps", "2", "--enrolled", "20",
            "--variant", "base", "--variant", "dim 128", "--json"]
    r = CliRunner().invoke(cli.app, args)
    assert r.exit_code == 0, r.output
    rows = json.loads(r.stdout)["rows"]
    assert [x["variant"] for x in rows] == ["base", "dim 128"]
    assert rows[0]["speed_vs_base"] == 1.0 and 0 <= rows[1]["top1"] <= 1
    saved = (tmp_path / "recipe_bench.json").read_text()
    r = CliRunner().invoke(cli.app, args)  # everything measured already: nothing retrained
    assert r.exit_code == 0 and (tmp_path / "recipe_bench.json").read_text() == saved
    bad = CliRunner().invoke(cli.app, ["bench", "recipe", "--out", str(tmp_path), "--variant", "nope"])
    assert isinstance(bad.exception, ConfigError) and "unknown variant 'nope'" in str(bad.exception)


def test_head_variants_train_with_each_heads_defaults():
    """The end-to-end head comparison's variants (bench recipe) build and train every head."""
    from megaclass.bench.recipe import HEAD_VARIANTS, variant
    from megaclass.train.recipes import recipe

    for name in HEAD_VARIANTS:
        r = variant(recipe("demo"), name)
        opts = {**r.options, "steps": 2, "batch_size": 32, "dim": 16, "widths": (8, 16), "progress": False,
                "num_workers": 0}
        opts.pop("checkpoint_every", None)
        t = Trainer(GlyphSource(range(40), samples_per_class=4), **opts)
        t.fit()
        assert t.head_.name == opts["head"] and len(t.history_) == 2, name


def test_bench_recipe_variant_resumes_from_its_checkpoint_and_scores_a_curve(tmp_path, monkeypatch):
    """A variant cut after training resumes from its last checkpoint (not step 0); --curve
    scores every checkpoint, with the training seconds carried across the two starts."""
    from megaclass.bench import recipe as rb

    real = rb.score_encoder

    def cut(encoder, protocol):
        raise RuntimeError("session ended")

    monkeypatch.setattr(rb, "score_encoder", cut)
    with pytest.raises(RuntimeError, match="session ended"):
        rb.run_recipe_bench(tmp_path, variants=["base"], steps=4, enrolled=20, curve=True, log=None)
    (run_dir,) = (tmp_path / "runs").iterdir()
    assert sorted(p.name for p in run_dir.glob("step-*")) == [f"step-{i:08d}" for i in (1, 2, 3, 4)]
    saved = json.loads((run_dir / "step-00000004" / "state.json").read_text())["history"][-1]
    monkeypatch.setattr(rb, "score_encoder", real)
    row = rb.run_recipe_bench(tmp_path, variants=["base"], steps=4, enrolled=20, curve=True,
                              log=None)["rows"][0]
    assert row["final_loss"] == saved["loss"] and row["train_seconds"] == saved["seconds"] > 0
    assert [p["step"] for p in row["curve"]] == [1, 2, 3, 4]
    assert all(0 <= p["top1"] <= 1 for p in row["curve"]) and row["curve"][-1]["top1"] == row["top1"]
    secs = [p["seconds"] for p in row["curve"]]
    assert secs == sorted(secs) and secs[-1] == row["train_seconds"]
    assert not any((tmp_path / "runs").iterdir())  # the run's checkpoints go once its row is written
    assert (tmp_path / "recipe_curves.png").stat().st_size > 1000  # accuracy vs training time
