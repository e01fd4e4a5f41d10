"""ONNX and TorchScript: export checked against torch, import as an encoder, bad models refused.

Pins: exported models agree with torch within 1e-4 cosine (1- and 3-channel); an exported
then imported ONNX model makes the same identification decisions as the torch model through
a real Recognizer (>= 99.9 %); an imported model's contract (mean/std, layout, fixed batch)
is applied as declared; every bad model is a typed error naming the problem, with nothing
written.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")
# torch.onnx.export(dynamo=False) warns that the TorchScript-based exporter is deprecated
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

from megaclass.data.glyphs import GlyphSource  # noqa: E402
from megaclass.data.input_spec import InputSpec  # noqa: E402
from megaclass.errors import ConfigError, InvalidInputError, ModelFormatError  # noqa: E402
from megaclass.gallery import Gallery  # noqa: E402
from megaclass.models import Encoder, EncoderConfig, OnnxEncoder, load_encoder  # noqa: E402
from megaclass.models.export import export_encoder  # noqa: E402
from megaclass.recognizer import Recognizer  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TOL = 1e-4


def _photo_encoder() -> Encoder:
    torch.manual_seed(0)
    cfg = EncoderConfig(dim=32, widths=(8, 16)).with_input(InputSpec.preset("photo", size=112))
    return Encoder(cfg).eval()


def _min_cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.nn.functional.cosine_similarity(a, b, dim=1).min())


def _torch_to_onnx(module: nn.Module, example: torch.Tensor, path: Path, dynamic: bool = True) -> Path:
    """A plain ONNX file (no megaclass metadata), as a model from elsewhere would be."""
    kwargs = {"dynamic_axes": {"x": {0: "n"}, "y": {0: "n"}}} if dynamic else {}
    torch.onnx.export(module.eval(), (example,), str(path), dynamo=False, input_names=["x"],
                      output_names=["y"], **kwargs)
    return path


# -- export ------------------------------------------------------------------------------
def test_export_onnx_one_channel_matches_torch_and_carries_its_contract(tiny_encoder, tmp_path):
    report = export_encoder(tiny_encoder, tmp_path / "m.onnx")
    assert report["samples"] == 100 and report["min_cosine"] >= 1 - TOL
    imported = OnnxEncoder.from_onnx(tmp_path / "m.onnx")  # no options: the metadata has them
    assert imported.dim == tiny_encoder.dim and imported.input_spec.size == 32
    assert imported.input_spec.channels == 1 and imported.input_spec.polarity == "auto"
    assert imported.config.source_fingerprint == tiny_encoder.fingerprint()
    x, _ = GlyphSource.batch(np.arange(5000, 5100), 1, seed=3)  # 100 images the check did not use
    assert _min_cosine(imported.embed(x), tiny_encoder.embed(x)) >= 1 - TOL


def test_export_onnx_three_channel_112px_includes_normalisation(tmp_path):
    enc = _photo_encoder()
    report = export_encoder(enc, tmp_path / "photo.onnx")
    assert report["min_cosine"] >= 1 - TOL
    imported = OnnxEncoder.from_onnx(tmp_path / "photo.onnx")
    spec = imported.input_spec
    assert (spec.channels, spec.size, spec.resize, spec.polarity) == (3, 112, "crop", "none")
    assert spec.is_identity_normalisation  # mean/std 127.5 are inside the graph, not applied twice
    x = torch.rand(100, 3, 112, 112, generator=torch.Generator().manual_seed(5))
    assert _min_cosine(imported.embed(x, batch_size=32), enc.embed(x)) >= 1 - TOL


def test_export_torchscript_round_trip(tiny_encoder, tmp_path):
    report = export_encoder(tiny_encoder, tmp_path / "m.pt", format="torchscript")
    assert report["format"] == "torchscript" and report["min_cosine"] >= 1 - TOL
    with zipfile.ZipFile(tmp_path / "m.pt") as zf:  # a TorchScript archive carrying the contract
        meta = json.loads(zf.read(next(n for n in zf.namelist() if n.endswith("megaclass.json"))))
    assert meta["dim"] == tiny_encoder.dim and meta["input"]["size"] == 32


def test_export_refuses_what_it_cannot_check_and_leaves_nothing(tiny_encoder, tmp_path, monkeypatch):
    import megaclass.models.export as export

    monkeypatch.setattr(export, "_run_onnx", lambda data, x: np.roll(x.reshape(len(x), -1)[:, :32], 1, 0))
    with pytest.raises(ModelFormatError, match="disagrees with torch"):
        export_encoder(tiny_encoder, tmp_path / "m.onnx")
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(ConfigError, match="format"):
        export_encoder(tiny_encoder, tmp_path / "m.x", format="tflite")


# -- import: same decisions as torch ---------------------------------------------------------
def test_imported_onnx_makes_the_same_identification_decisions(tiny_encoder, tmp_path):
    export_encoder(tiny_encoder, tmp_path / "m.onnx")
    OnnxEncoder.from_onnx(tmp_path / "m.onnx").save(tmp_path / "imported")
    onnx_enc = load_encoder(tmp_path / "imported")
    assert isinstance(onnx_enc, OnnxEncoder)
    enrolled = np.arange(20_000, 20_200)
    images, ids = GlyphSource.batch(enrolled, 3, seed=1)
    items = [(f"glyph-{c}", images[k * 3:(k + 1) * 3]) for k, c in enumerate(enrolled)]
    mated, _ = GlyphSource.batch(enrolled, 2, seed=2)
    non_mated, _ = GlyphSource.batch(np.arange(30_000, 30_200), 1, seed=2)
    queries = torch.cat([mated, non_mated])  # 600 searches, a third of them of unknown classes
    decisions = {}
    for name, enc in (("torch", tiny_encoder), ("onnx", onnx_enc)):
        with Recognizer(enc, tmp_path / f"g-{name}") as rec:
            rec.enroll_many(items)
            if name == "torch":
                threshold = rec.calibrate(GlyphSource.batch(np.arange(40_000, 40_300), 1)[0], 0.05).threshold
            rec.threshold = threshold
            decisions[name] = [(d.label, d.score, d.candidates[0].label) for d in rec.identify(queries, k=1)]
    pairs = list(zip(decisions["torch"], decisions["onnx"], strict=True))
    same = np.mean([a[0] == b[0] for a, b in pairs])  # accepted label or unknown
    same_top1 = np.mean([a[2] == b[2] for a, b in pairs])  # best class, threshold aside
    max_score_diff = max(abs(a[1] - b[1]) for a, b in pairs)
    assert same >= 0.999 and same_top1 >= 0.999, (same, same_top1)
    assert max_score_diff < 1e-4
    assert any(d[0] is None for d in decisions["torch"])  # the threshold rejected some


def test_three_channel_import_gives_the_same_gallery_decisions(tmp_path):
    enc = _photo_encoder()
    export_encoder(enc, tmp_path / "photo.onnx", samples=20)
    imported = OnnxEncoder.from_onnx(tmp_path / "photo.onnx")
    gen = torch.Generator().manual_seed(9)
    templates = torch.rand(50, 3, 112, 112, generator=gen)
    queries = (templates.repeat(4, 1, 1, 1) + 0.2 * torch.rand(200, 3, 112, 112, generator=gen)).clamp(0, 1)
    top1 = {}
    for name, model in (("torch", enc), ("onnx", imported)):
        with Gallery.open(tmp_path / f"g-{name}", dim=model.dim) as g:
            g.enroll_many([(f"c{i}", model.embed(templates[i:i + 1]).numpy()) for i in range(50)])
            top1[name] = [m[0].label for m in g.search(model.embed(queries).numpy(), k=1)]
    assert np.mean([a == b for a, b in zip(top1["torch"], top1["onnx"], strict=True)]) >= 0.999


# -- import: the contract of a model from elsewhere --------------------------------------------
class _Nhwc(nn.Module):
    """An NHWC graph over an un-normalising encoder, as many exported face models are."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return self.inner(x.permute(0, 3, 1, 2))


def test_mean_std_and_layout_are_applied_as_declared(tmp_path):
    torch.manual_seed(1)
    raw = Encoder(EncoderConfig(dim=16, widths=(8, 16), in_channels=3, input_size=32)).eval()
    assert raw.input_spec.is_identity_normalisation  # so the graph takes what it is given
    path = _torch_to_onnx(_Nhwc(raw), torch.rand(2, 32, 32, 3), tmp_path / "nhwc.onnx")
    enc = OnnxEncoder.from_onnx(path, mean=127.5, std=128, dim=16)
    assert enc.config.layout == "NHWC" and enc.input_spec.channels == 3 and enc.input_size == 32
    x = torch.rand(20, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    expected = raw.embed((255 * x - 127.5) / 128)
    assert _min_cosine(enc.embed(x), expected) >= 1 - TOL
    assert torch.allclose(enc.embed(x).norm(dim=1), torch.ones(20), atol=1e-5)


def test_fixed_batch_graph_runs_in_chunks(tmp_path):
    torch.manual_seed(2)
    raw = Encoder(EncoderConfig(dim=16, widths=(8,))).eval()
    path = _torch_to_onnx(raw, torch.rand(1, 1, 32, 32), tmp_path / "b1.onnx", dynamic=False)
    enc = OnnxEncoder.from_onnx(path)
    assert enc.config.fixed_batch == 1
    x = torch.rand(5, 1, 32, 32)
    assert _min_cosine(enc.embed(x), raw.embed(x)) >= 1 - TOL


def test_tampered_model_file_and_wrong_image_shape(tiny_encoder, tmp_path):
    export_encoder(tiny_encoder, tmp_path / "m.onnx", samples=10)
    enc = OnnxEncoder.from_onnx(tmp_path / "m.onnx")
    with pytest.raises(InvalidInputError, match=r"\(N, 1, 32, 32\)"):
        enc.embed(torch.rand(2, 3, 32, 32))
    enc.save(tmp_path / "imp")
    (tmp_path / "imp" / "model.onnx").write_bytes((tmp_path / "imp" / "model.onnx").read_bytes()[:-1] + b"x")
    with pytest.raises(ModelFormatError, match="sha256"):
        load_encoder(tmp_path / "imp")


class _NanOnWhite(nn.Module):
    """Finite on the random test batch, NaN for a white image."""

    def forward(self, x):
        m = x.mean(dim=(1, 2, 3), keepdim=False).unsqueeze(1)
        return torch.sqrt(0.9 - m) + x.mean(dim=(2, 3)).repeat(1, 8)


def test_non_finite_output_at_embed_time_is_an_error(tmp_path):
    enc = OnnxEncoder.from_onnx(_torch_to_onnx(_NanOnWhite(), torch.rand(2, 1, 16, 16), tmp_path / "w.onnx"))
    assert enc.dim == 8 and enc.embed(torch.rand(3, 1, 16, 16)).isfinite().all()
    with pytest.raises(ModelFormatError, match="non-finite .* for 1 of 3 images"):
        enc.embed(torch.cat([torch.rand(2, 1, 16, 16), torch.ones(1, 1, 16, 16)]))


def test_save_refuses_a_directory_holding_other_files(tiny_encoder, tmp_path):
    export_encoder(tiny_encoder, tmp_path / "m.onnx", samples=10)
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("keep me")
    with pytest.raises(ConfigError, match="not empty"):
        OnnxEncoder.from_onnx(tmp_path / "m.onnx").save(tmp_path / "busy")
    assert [p.name for p in (tmp_path / "busy").iterdir()] == ["notes.txt"]


# -- import: bad models are refused and leave nothing ----------------------------------------
class _FeatureMap(nn.Module):
    def forward(self, x):
        return x * 2.0  # (N, C, H, W): a 4-D output


class _NotFinite(nn.Module):
    def forward(self, x):
        return torch.log(x.mean(dim=(2, 3)).repeat(1, 8) - 2.0)  # log of a negative number


@pytest.mark.parametrize(("make", "options", "error", "match"), [
    (lambda p: _torch_to_onnx(_FeatureMap(), torch.rand(2, 3, 16, 16), p), {}, ModelFormatError, "2-D"),
    (lambda p: _torch_to_onnx(_NotFinite(), torch.rand(2, 3, 16, 16), p), {}, ModelFormatError,
     "not finite"),
    (lambda p: _torch_to_onnx(Encoder(EncoderConfig(dim=16, widths=(8,))), torch.rand(2, 1, 32, 32), p),
     {"dim": 512}, ConfigError, "not the declared dim 512"),
    (lambda p: _torch_to_onnx(Encoder(EncoderConfig(dim=16, widths=(8,))), torch.rand(2, 1, 32, 32), p),
     {"channels": 3}, ConfigError, "takes 1 channels, not 3"),
    (lambda p: p.write_bytes(b"definitely not protobuf") and p, {}, ModelFormatError, "not a loadable ONNX"),
    (lambda p: p, {}, ModelFormatError, "no such ONNX file"),
], ids=["4d-output", "nan-output", "wrong-dim", "wrong-channels", "garbage", "missing"])
def test_bad_models_are_refused_and_nothing_is_written(tmp_path, make, options, error, match):
    path = tmp_path / "bad.onnx"
    make(path)
    out = tmp_path / "out"
    with pytest.raises(error, match=match):
        OnnxEncoder.from_onnx(path, **options).save(out)
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]


# -- the command line ------------------------------------------------------------------------
def _cli(*args, check=True):
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    proc = subprocess.run([sys.executable, "-m", "megaclass.cli", *map(str, args)], capture_output=True,
                          text=True, env=env, timeout=300)
    if check and proc.returncode != 0:
        raise AssertionError(f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    return proc


def test_cli_export_import_enroll_identify(tiny_model_dir, tmp_path):
    exp = json.loads(_cli("export", "-m", tiny_model_dir, "-o", tmp_path / "m.onnx", "--json").stdout)
    assert exp["min_cosine"] >= 1 - TOL and exp["samples"] == 100
    imp = json.loads(_cli("import-encoder", tmp_path / "m.onnx", "-o", tmp_path / "face", "--json").stdout)
    assert imp["kind"] == "megaclass.onnx_encoder" and imp["dim"] == exp["dim"]
    assert json.loads((tmp_path / "face" / "config.json").read_text())["onnx_sha256"]
    _cli("enroll", "-m", tmp_path / "face", "-g", tmp_path / "g", "--from", "glyphs:7000-7030",
         "--per-class", "4", "--json")
    res = json.loads(_cli("identify", "-m", tmp_path / "face", "-g", tmp_path / "g", "glyph:7003",
                          "-k", "3", "--no-threshold", "--json").stdout)
    assert res["results"][0]["candidates"][0]["label"] == "glyph-7003"


def test_cli_import_errors_are_one_line_and_write_nothing(tmp_path):
    _torch_to_onnx(_FeatureMap(), torch.rand(2, 3, 16, 16), tmp_path / "fm.onnx")
    proc = _cli("import-encoder", tmp_path / "fm.onnx", "-o", tmp_path / "out", check=False)
    assert proc.returncode == 2 and "2-D" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "out").exists()


def test_megaclass_serve_runs_an_imported_onnx_model_from_its_directory(tmp_path):
    """`megaclass serve -m face/` with an imported encoder: a colour photo in, candidates out."""
    from fastapi.testclient import TestClient

    from _serve_helpers import files, png
    from megaclass.serve import create_app

    export_encoder(_photo_encoder(), tmp_path / "photo.onnx", samples=20)
    OnnxEncoder.from_onnx(tmp_path / "photo.onnx").save(tmp_path / "face")
    app = create_app(str(tmp_path / "face"), tmp_path / "g")  # a path, as the CLI passes it
    svc = app.state.service
    assert isinstance(svc.recognizer.encoder, OnnxEncoder)
    token = svc.keys.add("t", "admin")[1]
    head = {"Authorization": f"Bearer {token}"}
    gen = torch.Generator().manual_seed(3)
    photos = [png(torch.rand(1, 64, 80, generator=gen)) for _ in range(2)]
    with TestClient(app) as client:
        r = client.post("/v1/classes", headers=head, data={"label": "p"}, files=files(photos))
        assert r.status_code == 201, r.text
        r = client.post("/v1/identify?no_threshold=true", headers=head, files=files(photos[:1]))
        assert r.status_code == 200, r.text
        assert r.json()["results"][0]["candidates"][0]["label"] == "p"
