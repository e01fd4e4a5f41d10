import json

from megaclass.demo import DemoConfig, run_demo


def test_quick_demo_writes_report_and_plot(tmp_path):
    report = run_demo(tmp_path, DemoConfig.quick(), progress=False, log=lambda *a: None)
    saved = json.loads((tmp_path / "report.json").read_text())
    assert saved["model"]["top1"] == report["model"]["top1"]
    for side in ("model", "raw_pixel_baseline"):
        r = saved[side]
        assert 0 <= r["top1"] <= r["top5"] <= 1
        assert 0 <= r["fnir"] <= 1 and 0 <= r["fpir"] <= 1
    assert saved["calibration"]["achieved_fpir"] <= saved["config"]["target_fpir"]
    assert (tmp_path / "scores.png").read_bytes()[:4] == b"\x89PNG"
    assert (tmp_path / "model" / "model.safetensors").is_file()
    assert (tmp_path / "gallery" / "gallery.db").is_file()


def test_demo_scores_the_shipped_reference_model_on_the_same_queries(tmp_path):
    from typer.testing import CliRunner

    from megaclass import cli

    config = DemoConfig.quick()
    config.reference = True
    report = run_demo(tmp_path, config, progress=False, log=lambda *a: None)
    ref, quick = report["reference_model"], report["model"]
    # 200 unseen classes: the 10,000-step reference beats the 30-step quick model widely
    assert ref["top1"] >= 0.95 and ref["top1"] > quick["top1"] + 0.2, (ref, quick)
    assert json.loads((tmp_path / "report.json").read_text())["reference_model"]["top1"] == ref["top1"]
    r = CliRunner().invoke(cli.app, ["demo", "--quick", "--out", str(tmp_path / "cli")])
    assert r.exit_code == 0 and "raw-pixel baseline" in r.output
