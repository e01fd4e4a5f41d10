"""Export a megaclass :class:`~megaclass.models.Encoder` to ONNX or TorchScript, checked.

The exported graph is the whole model, normalisation included: it takes float
``(N, C, size, size)`` images in ``[0, 1]`` (N dynamic) and returns ``(N, dim)``
unit-norm embeddings, exactly what :meth:`Encoder.embed` computes. After writing,
the exported model is run on 100 images (glyph drawings and uniform noise) and its
embeddings are compared with torch's; below a cosine of ``1 - 1e-4`` on any image
nothing is left at the destination and :class:`ModelFormatError` is raised.

ONNX files carry the model's contract as JSON in the ``megaclass`` metadata entry
(input spec of the *graph* — it expects ``[0, 1]`` pixels, so mean 0 / std 255 —,
layout, dim, the source model's fingerprint), so ``megaclass import-encoder``
needs no options for them. TorchScript files carry the same JSON as the extra file
``megaclass.json``.

Example
-------
>>> from megaclass.models import Encoder, EncoderConfig
>>> from megaclass.models.export import export_encoder
>>> report = export_encoder(Encoder(EncoderConfig(dim=16, widths=(8, 16))), "m.onnx")  # doctest: +SKIP
>>> report["min_cosine"] >= 1 - 1e-4                                                  # doctest: +SKIP
True
"""

from __future__ import annotations

import json
import os
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch

from ..data.input_spec import InputSpec
from ..errors import ConfigError, ModelFormatError
from .encoder import Encoder
from .onnx_encoder import METADATA_KEY, onnxruntime

FORMATS = ("onnx", "torchscript")
CHECK_SAMPLES = 100
TOLERANCE = 1e-4  # 1 - cosine, per sample
OPSET = 17


def export_encoder(encoder: Encoder, path: str | os.PathLike, *, format: str = "onnx",
                   samples: int = CHECK_SAMPLES, tolerance: float = TOLERANCE,
                   opset: int = OPSET) -> dict:
    """Write ``encoder`` to ``path`` as ONNX or TorchScript and check it against torch.

    Parameters
    ----------
    encoder : a megaclass :class:`Encoder` (an imported ONNX encoder is already a file).
    path : the output file; written atomically, only once the check has passed.
    format : ``"onnx"`` or ``"torchscript"``.
    samples : images in the check (half glyph drawings, half uniform noise).
    tolerance : the largest allowed ``1 - cosine`` between torch's and the exported
        model's embedding of any check image.
    opset : ONNX opset version.

    Returns a report: path, format, bytes, samples, min_cosine, max_abs_diff.
    Raises :class:`ModelFormatError` when the exported model disagrees with torch
    (and removes the output), :class:`ConfigError` for bad options.
    """
    if format not in FORMATS:
        raise ConfigError(f"export format must be one of {', '.join(FORMATS)}, got {format!r}")
    if not isinstance(encoder, Encoder):
        raise ConfigError(f"only a torch megaclass Encoder can be exported, got {type(encoder).__name__} "
                          f"(an imported ONNX encoder's model.onnx is already the file)")
    if samples < 1:
        raise ConfigError(f"samples must be >= 1, got {samples}")
    out = Path(path)
    if out.is_dir():
        raise ConfigError(f"{out} is a directory; give the output file name")
    out.parent.mkdir(parents=True, exist_ok=True)
    was_training = encoder.training
    encoder.eval()
    try:
        report = _export_checked(encoder, out, format, samples, tolerance, opset)
    finally:
        encoder.train(was_training)
    return report


def _export_checked(encoder: Encoder, out: Path, format: str, samples: int, tolerance: float,
                    opset: int) -> dict:
    x = _check_images(encoder.input_spec, samples)
    with torch.no_grad():
        reference = encoder(x).numpy()
    fd, tmp_name = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        if format == "onnx":
            tmp.write_bytes(_onnx_bytes(encoder, opset))
            got = _run_onnx(tmp.read_bytes(), x.numpy())
        else:
            _save_torchscript(encoder, tmp)
            got = _run_torchscript(tmp, x)
        min_cos, max_diff = _agreement(reference, got)
        if not min_cos >= 1.0 - tolerance:  # NaN fails too
            raise ModelFormatError(
                f"the exported {format} model disagrees with torch: min cosine {min_cos:.6f} over "
                f"{samples} images (needs >= {1 - tolerance}); nothing was written to {out}"
            )
        os.replace(tmp, out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return {"path": str(out), "format": format, "bytes": out.stat().st_size, "samples": samples,
            "min_cosine": min_cos, "max_abs_diff": max_diff, "dim": encoder.dim,
            "input": encoder.input_spec.to_dict(), "source_fingerprint": encoder.fingerprint()}


def export_metadata(encoder: Encoder) -> dict:
    """The contract of the exported graph (what import-encoder reads back)."""
    spec = encoder.input_spec
    graph_spec = spec.with_(mean=(0.0,) * spec.channels, std=(255.0,) * spec.channels)
    return {"format_version": 1, "producer": "megaclass", "input": graph_spec.to_dict(),
            "layout": "NCHW", "dim": encoder.dim, "l2_normalise": True,
            "normalisation_in_graph": {"mean": list(spec.mean), "std": list(spec.std)},
            "source_fingerprint": encoder.fingerprint()}


def _check_images(spec: InputSpec, n: int) -> torch.Tensor:
    """``n`` seeded images: glyph drawings (what the models see) and uniform noise (everything else)."""
    from ..data.glyphs import GlyphSource

    glyphs = max(1, n // 2) if n > 1 else n
    ids = np.arange(glyphs) + 1_000_000
    g, _ = GlyphSource.batch(ids, 1, seed=7, size=spec.size)
    g = g.repeat(1, spec.channels, 1, 1)
    noise = torch.rand(n - glyphs, spec.channels, spec.size, spec.size,
                       generator=torch.Generator().manual_seed(0))
    return torch.cat([g, noise]).float().contiguous()


def _onnx_bytes(encoder: Encoder, opset: int) -> bytes:
    try:
        import onnx
    except ImportError as exc:
        raise ConfigError("ONNX export needs the onnx package: pip install 'megaclass[onnx]'") from exc
    spec = encoder.input_spec
    dummy = torch.rand(2, spec.channels, spec.size, spec.size, generator=torch.Generator().manual_seed(1))
    # torch.onnx.export is declared to take a path (the file-like object it also accepts
    # is not in its signature): the graph goes through a temporary file.
    with tempfile.TemporaryDirectory(prefix="megaclass-onnx-") as tmp, warnings.catch_warnings():
        # the TorchScript-based exporter is deprecated but is the stable one
        warnings.simplefilter("ignore", DeprecationWarning)
        graph = Path(tmp) / "model.onnx"
        torch.onnx.export(encoder, (dummy,), graph, dynamo=False, opset_version=opset,
                          input_names=["images"], output_names=["embeddings"],
                          dynamic_axes={"images": {0: "batch"}, "embeddings": {0: "batch"}})
        model = onnx.load_from_string(graph.read_bytes())
    entry = model.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, json.dumps(export_metadata(encoder))
    model.producer_name = "megaclass"
    return model.SerializeToString()


def _run_onnx(data: bytes, x: np.ndarray) -> np.ndarray:
    ort = onnxruntime()
    session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    return np.asarray(session.run(["embeddings"], {"images": x})[0])


def _save_torchscript(encoder: Encoder, path: Path) -> None:
    spec = encoder.input_spec
    dummy = torch.rand(2, spec.channels, spec.size, spec.size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        traced = torch.jit.trace(encoder, dummy)
        torch.jit.save(traced, str(path),
                       _extra_files={"megaclass.json": json.dumps(export_metadata(encoder))})


def _run_torchscript(path: Path, x: torch.Tensor) -> np.ndarray:
    # The only load of a TorchScript file in megaclass: our own output, right after writing it.
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        module = torch.jit.load(str(path), map_location="cpu")
        return module(x).numpy()


def _agreement(reference: np.ndarray, got: np.ndarray) -> tuple[float, float]:
    """(min cosine, max |difference|) between matching rows; (-1, inf) when shapes differ."""
    if got.shape != reference.shape:
        return -1.0, float("inf")
    a = reference / np.maximum(np.linalg.norm(reference, axis=1, keepdims=True), 1e-12)
    b = got / np.maximum(np.linalg.norm(got, axis=1, keepdims=True), 1e-12)
    return float(np.min(np.sum(a * b, axis=1))), float(np.max(np.abs(reference - got)))
