"""An ONNX embedding model used as a megaclass encoder (onnxruntime, CPU).

:class:`OnnxEncoder` has the interface everything above the model uses (``dim``,
``input_size``, ``input_spec``, ``embed``, ``fingerprint``, ``save``/``load``), so
an imported model works for enroll, identify, verify, evaluate and the service
exactly like a trained :class:`~megaclass.models.Encoder`.

Its input contract is an :class:`~megaclass.data.input_spec.InputSpec` plus the
tensor layout the graph wants (``NCHW`` or ``NHWC``) and whether to L2-normalise
the output. :meth:`OnnxEncoder.embed` takes the same ``(N, C, size, size)``
images in ``[0, 1]`` that every megaclass model takes, applies
``(255 * x - mean) / std`` itself, transposes to the layout, runs the graph in
batches and L2-normalises the rows.

A model directory holds ``config.json`` (kind ``megaclass.onnx_encoder``) and a
copy of the ONNX file, whose sha256 the config records and :meth:`load` checks.
Only ``onnxruntime`` is needed at run time (``pip install 'megaclass[onnx]'``);
it is imported when an ONNX encoder is first built.

Models exported by ``megaclass export`` carry their contract in the ONNX
metadata (key ``megaclass``), so importing them needs no options; for other
models (e.g. an ArcFace ResNet: 112 x 112 RGB, mean 127.5, std 128, 512-d,
NCHW) pass the contract, and :meth:`from_onnx` checks it on a test batch.

Example
-------
>>> enc = OnnxEncoder.from_onnx("face.onnx", size=112, channels=3, mean=127.5,
...                             std=128, dim=512, resize="stretch")  # doctest: +SKIP
>>> enc.save("face/")                                               # doctest: +SKIP
>>> enc.embed(torch.rand(4, 3, 112, 112)).shape                     # doctest: +SKIP
torch.Size([4, 512])
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from ..data.input_spec import InputSpec
from ..errors import ConfigError, InvalidInputError, ModelFormatError
from ..tensorio import read_json

KIND = "megaclass.onnx_encoder"
FORMAT_VERSION = 1
CONFIG_FILE = "config.json"
ONNX_FILE = "model.onnx"
METADATA_KEY = "megaclass"  # ONNX metadata_props key written by ``megaclass export``
LAYOUTS = ("NCHW", "NHWC")
_CHECK_BATCH = 2  # images in the test batch run at import
_DTYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64}


def onnxruntime():
    """The ``onnxruntime`` module, or a ConfigError saying how to install it."""
    try:
        import onnxruntime as ort
    except ImportError as exc:
        raise ConfigError("ONNX encoders need onnxruntime: pip install 'megaclass[onnx]'") from exc
    return ort


@dataclass(frozen=True)
class OnnxEncoderConfig:
    """The contract of an imported ONNX model (everything ``config.json`` records).

    Parameters
    ----------
    input : what images the model takes (channels, size, resize, polarity, mean/std
        in pixel units, applied by :meth:`OnnxEncoder.embed` before the graph).
    dim : embedding dimension D (the graph's output is ``(N, D)``).
    layout : ``"NCHW"`` or ``"NHWC"``: how the graph wants the image tensor.
    l2_normalise : normalise each output row to unit norm (off only for a graph that
        already does it and where a bit-exact output matters).
    onnx_input, onnx_output : names of the graph's image input and embedding output.
    fixed_batch : the graph's batch size when it is not dynamic (inputs are run in
        chunks of that size), else None.
    onnx_sha256 : hash of the ONNX file (checked by :meth:`OnnxEncoder.load`).
    source : file name the model was imported from (informative).
    source_fingerprint : fingerprint of the megaclass model it was exported from, if any.
    """

    input: InputSpec
    dim: int
    layout: str = "NCHW"
    l2_normalise: bool = True
    onnx_input: str = "images"
    onnx_output: str = "embeddings"
    fixed_batch: int | None = None
    onnx_sha256: str = ""
    source: str = ""
    source_fingerprint: str | None = None
    extra: dict = field(default_factory=dict)

    def validate(self) -> None:
        if isinstance(self.dim, bool) or not isinstance(self.dim, int) or self.dim < 2:
            raise ConfigError(f"embedding dim must be an integer >= 2, got {self.dim!r}")
        if self.layout not in LAYOUTS:
            raise ConfigError(f"layout must be one of {', '.join(LAYOUTS)}, got {self.layout!r}")
        self.input.validate()

    def to_dict(self) -> dict:
        return {"format_version": FORMAT_VERSION, "kind": KIND, "input": self.input.to_dict(),
                "dim": self.dim, "layout": self.layout, "l2_normalise": self.l2_normalise,
                "onnx_file": ONNX_FILE, "onnx_input": self.onnx_input, "onnx_output": self.onnx_output,
                "fixed_batch": self.fixed_batch, "onnx_sha256": self.onnx_sha256,
                "source": self.source, "source_fingerprint": self.source_fingerprint,
                "extra": dict(self.extra)}

    @classmethod
    def from_dict(cls, data: dict) -> OnnxEncoderConfig:
        try:
            cfg = cls(input=InputSpec.from_dict(data["input"]), dim=int(data["dim"]),
                      layout=data.get("layout", "NCHW"), l2_normalise=bool(data.get("l2_normalise", True)),
                      onnx_input=data["onnx_input"], onnx_output=data["onnx_output"],
                      fixed_batch=data.get("fixed_batch"), onnx_sha256=data.get("onnx_sha256", ""),
                      source=data.get("source", ""), source_fingerprint=data.get("source_fingerprint"),
                      extra=dict(data.get("extra") or {}))
        except (KeyError, TypeError, ValueError) as exc:
            if isinstance(exc, ConfigError):
                raise
            raise ModelFormatError(f"ONNX encoder config is incomplete or malformed: {exc!r}") from exc
        cfg.validate()
        return cfg


class OnnxEncoder:
    """An ONNX embedding model behind the megaclass encoder interface.

    Build one with :meth:`from_onnx` (an ONNX file and its contract; checked on a
    test batch) or :meth:`load` (a model directory written by :meth:`save` or by
    ``megaclass import-encoder``).

    Parameters
    ----------
    model : the ONNX file's bytes.
    config : its contract.

    Attributes
    ----------
    config : OnnxEncoderConfig
    dim, input_size, input_spec : as on :class:`~megaclass.models.Encoder`.
    """

    training = False  # torch-module look-alike: an ONNX graph is always in inference mode

    def __init__(self, model: bytes, config: OnnxEncoderConfig, *, session=None) -> None:
        config.validate()
        self.config = config
        self._bytes = bytes(model)
        self._session = session if session is not None else _session(self._bytes)
        names_in = [i.name for i in self._session.get_inputs()]
        names_out = [o.name for o in self._session.get_outputs()]
        if config.onnx_input not in names_in or config.onnx_output not in names_out:
            raise ModelFormatError(
                f"ONNX graph has inputs {names_in} and outputs {names_out}; the config names "
                f"input {config.onnx_input!r} and output {config.onnx_output!r}"
            )
        spec = config.input
        shape = (1, spec.channels, 1, 1)
        self._shift = np.asarray(spec.mean, np.float32).reshape(shape)
        self._scale = (1.0 / np.asarray(spec.std, np.float32)).reshape(shape)
        self._identity = spec.is_identity_normalisation
        inp = next(i for i in self._session.get_inputs() if i.name == config.onnx_input)
        self._dtype = _DTYPES.get(inp.type)
        if self._dtype is None:
            raise ModelFormatError(f"ONNX input {inp.name!r} has type {inp.type}; megaclass feeds images "
                                   f"as float (float32, float16 or double)")

    # -- the encoder interface --------------------------------------------------
    @property
    def dim(self) -> int:
        return self.config.dim

    @property
    def input_size(self) -> int:
        return self.config.input.size

    @property
    def input_spec(self) -> InputSpec:
        """What :func:`~megaclass.data.images.to_batch` must produce for this model."""
        return self.config.input

    def eval(self) -> OnnxEncoder:
        """No-op (an ONNX graph has no training mode); here so callers can treat it as a module."""
        return self

    def train(self, mode: bool = True) -> OnnxEncoder:
        if mode:
            raise ConfigError("an imported ONNX encoder cannot be trained; use it for inference only")
        return self

    def embed(self, images, *, batch_size: int = 256) -> torch.Tensor:
        """``(N, C, size, size)`` images in ``[0, 1]`` -> CPU float32 ``(N, dim)`` embeddings.

        Rows have unit norm unless the config turns ``l2_normalise`` off. Raises
        :class:`InvalidInputError` for images of the wrong shape and
        :class:`ModelFormatError` when the graph returns a wrong shape or non-finite values.
        """
        x = images.detach().cpu().numpy() if isinstance(images, torch.Tensor) else np.asarray(images)
        spec = self.config.input
        if x.ndim != 4 or x.shape[1:] != (spec.channels, spec.size, spec.size):
            raise InvalidInputError(
                f"expected images of shape (N, {spec.channels}, {spec.size}, {spec.size}), "
                f"got {tuple(x.shape)}"
            )
        if x.shape[0] == 0:
            return torch.empty(0, self.dim)
        step = self.config.fixed_batch or max(1, int(batch_size))
        out = np.concatenate([self._run(x[i : i + step]) for i in range(0, len(x), step)])
        return torch.from_numpy(out)

    def fingerprint(self) -> str:
        """A short hash of the contract and the ONNX bytes: which model produced a template."""
        cfg = self.config.to_dict()
        for key in ("source", "extra"):  # where it came from does not change what it computes
            cfg.pop(key)
        h = hashlib.sha256(json.dumps(cfg, sort_keys=True).encode())
        h.update(self._bytes)
        return h.hexdigest()[:16]

    # -- running the graph ------------------------------------------------------
    def _forward(self, chunk: np.ndarray) -> np.ndarray:
        """The graph's raw output for images in ``[0, 1]`` (normalised, laid out, padded)."""
        n = len(chunk)
        x = chunk.astype(np.float32, copy=False)
        if not self._identity:
            x = (x * np.float32(255.0) - self._shift) * self._scale
        if self.config.fixed_batch and n < self.config.fixed_batch:  # pad the last chunk
            pad = np.zeros((self.config.fixed_batch - n, *x.shape[1:]), np.float32)
            x = np.concatenate([x, pad])
        if self.config.layout == "NHWC":
            x = x.transpose(0, 2, 3, 1)
        x = np.ascontiguousarray(x, dtype=self._dtype)
        try:
            (y,) = self._session.run([self.config.onnx_output], {self.config.onnx_input: x})
        except Exception as exc:  # onnxruntime raises its own exception types
            raise ModelFormatError(f"the ONNX model failed on a {x.shape} {self.config.layout} batch: "
                                   f"{exc}") from exc
        return np.asarray(y)

    def _run(self, chunk: np.ndarray) -> np.ndarray:
        n = len(chunk)
        y = self._forward(chunk)
        fed = max(n, self.config.fixed_batch or 0)
        if y.ndim != 2 or y.shape != (fed, self.dim):
            raise ModelFormatError(
                f"the ONNX model's output {self.config.onnx_output!r} has shape {tuple(y.shape)} for a "
                f"batch of {fed}; an embedding model must output a 2-D (N, dim) tensor "
                f"(dim {self.dim})"
            )
        y = y[:n].astype(np.float32, copy=False)
        bad = ~np.isfinite(y).all(axis=1)
        if bad.any():
            raise ModelFormatError(f"the ONNX model produced non-finite (NaN/inf) embeddings for "
                                   f"{int(bad.sum())} of {n} images")
        if self.config.l2_normalise:
            y = y / np.maximum(np.linalg.norm(y, axis=1, keepdims=True), np.float32(1e-12))
        return np.ascontiguousarray(y, dtype=np.float32)

    # -- building and persistence ----------------------------------------------
    @classmethod
    def from_onnx(cls, path: str | os.PathLike, *, size: int | None = None,
                  channels: int | None = None, mean=None, std=None, dim: int | None = None,
                  layout: str | None = None, l2_normalise: bool | None = None,
                  resize: str | None = None, polarity: str | None = None) -> OnnxEncoder:
        """An encoder for the ONNX file ``path``, with its contract checked on a test batch.

        Every option left as None takes the value recorded by ``megaclass export`` in the
        file's metadata, else what the graph's input shape says (channels, size, layout),
        else the defaults: mean 0 / std 255 (the graph gets ``[0, 1]`` pixels), ``crop``
        for 3 channels and ``pad`` for 1, NCHW, L2-normalised output.

        Raises :class:`ModelFormatError` when the file is missing or not a runnable ONNX
        model, its output is not ``(N, D)`` or not finite on the test batch, and
        :class:`ConfigError` when an option contradicts the graph (e.g. ``dim``).
        """
        src = Path(path)
        if not src.is_file():
            raise ModelFormatError(f"{src}: no such ONNX file")
        data = src.read_bytes()
        session = _session(data, name=str(src))
        meta = _megaclass_metadata(session, src)
        inputs, outputs = session.get_inputs(), session.get_outputs()
        if len(inputs) != 1:
            raise ModelFormatError(f"{src} has {len(inputs)} inputs "
                                   f"({', '.join(i.name for i in inputs)}); an image encoder has one")
        inp = inputs[0]
        if len(inp.shape) != 4:
            raise ModelFormatError(f"{src}: input {inp.name!r} has shape {inp.shape}; an image encoder "
                                   f"takes a 4-D batch (NCHW or NHWC)")
        layout = layout or meta.get("layout") or _guess_layout(inp.shape)
        if layout not in LAYOUTS:
            raise ConfigError(f"layout must be one of {', '.join(LAYOUTS)}, got {layout!r}")
        static = _static_dims(inp.shape, layout)  # channels, size (None when dynamic)
        spec = _spec(meta.get("input"), static, size=size, channels=channels, mean=mean, std=std,
                     resize=resize, polarity=polarity, src=src)
        _check_against_graph(spec, static, layout, inp, src)
        fixed = inp.shape[0] if isinstance(inp.shape[0], int) and inp.shape[0] > 0 else None
        declared = dim if dim is not None else meta.get("dim")
        out_dim = outputs[0].shape[1] if len(outputs[0].shape) == 2 else None
        probe_dim = declared or (out_dim if isinstance(out_dim, int) else None)
        if l2_normalise is None:
            l2_normalise = meta.get("l2_normalise", True)
        config = OnnxEncoderConfig(
            input=spec, dim=int(probe_dim or 2), layout=layout, l2_normalise=bool(l2_normalise),
            onnx_input=inp.name, onnx_output=outputs[0].name, fixed_batch=fixed,
            onnx_sha256=hashlib.sha256(data).hexdigest(), source=src.name,
            source_fingerprint=meta.get("source_fingerprint"),
        )
        enc = cls(data, config, session=session)
        found = _probe(enc, src)
        if declared is not None and int(declared) != found:
            raise ConfigError(f"{src} makes {found}-d embeddings, not the declared dim {declared}")
        enc.config = replace(config, dim=found)
        return enc

    def save(self, path: str | os.PathLike) -> Path:
        """Write ``config.json`` + ``model.onnx`` into directory ``path`` (all or nothing).

        The files are written into a temporary sibling directory that then takes the
        place of ``path``; an existing ``path`` must be empty or an ONNX encoder
        directory (it is replaced), so an interrupted save never leaves half a model.
        """
        out = Path(path)
        if out.exists():
            if not out.is_dir():
                raise ConfigError(f"{out} exists and is not a directory")
            contents = {p.name for p in out.iterdir()}
            if contents and not contents <= {CONFIG_FILE, ONNX_FILE}:
                raise ConfigError(f"{out} is not empty; choose a new directory for the encoder")
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp"))
        try:
            (tmp / ONNX_FILE).write_bytes(self._bytes)
            cfg = self.config.to_dict()
            cfg["fingerprint"] = self.fingerprint()
            (tmp / CONFIG_FILE).write_text(json.dumps(cfg, indent=2))
            if out.exists():
                old = out.with_name(f".{out.name}.old")
                shutil.rmtree(old, ignore_errors=True)
                os.replace(out, old)
                os.replace(tmp, out)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.replace(tmp, out)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return out

    @classmethod
    def load(cls, path: str | os.PathLike) -> OnnxEncoder:
        """Load a directory written by :meth:`save`; the ONNX file must match its recorded sha256."""
        root = Path(path)
        cfg_path, onnx_path = root / CONFIG_FILE, root / ONNX_FILE
        if not cfg_path.is_file() or not onnx_path.is_file():
            raise ModelFormatError(
                f"{root} is not an ONNX encoder directory (needs {CONFIG_FILE} and {ONNX_FILE})"
            )
        data = read_json(cfg_path)
        if data.get("kind") != KIND:
            raise ModelFormatError(f"{cfg_path} does not describe an ONNX encoder")
        if data.get("format_version", 0) > FORMAT_VERSION:
            raise ModelFormatError(f"{root} was written by a newer megaclass "
                                   f"(format {data['format_version']})")
        config = OnnxEncoderConfig.from_dict(data)
        model = onnx_path.read_bytes()
        digest = hashlib.sha256(model).hexdigest()
        if config.onnx_sha256 and digest != config.onnx_sha256:
            raise ModelFormatError(f"{onnx_path} does not match the sha256 in {cfg_path} "
                                   f"(the file was changed or damaged)")
        return cls(model, config)


def _session(data: bytes, name: str = "ONNX model"):
    ort = onnxruntime()
    opts = ort.SessionOptions()
    opts.log_severity_level = 3  # errors only: initializer warnings are noise to a user
    try:
        return ort.InferenceSession(data, sess_options=opts, providers=["CPUExecutionProvider"])
    except Exception as exc:  # InvalidProtobuf, Fail, ... (onnxruntime's own types)
        raise ModelFormatError(f"{name} is not a loadable ONNX model: {exc}") from exc


def _megaclass_metadata(session, src: Path) -> dict:
    raw = session.get_modelmeta().custom_metadata_map.get(METADATA_KEY)
    if raw is None:
        return {}
    try:
        meta = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ModelFormatError(f"{src}: the {METADATA_KEY!r} metadata is not JSON: {exc}") from exc
    return meta if isinstance(meta, dict) else {}


def _guess_layout(shape) -> str:
    c_first, c_last = shape[1] in (1, 3), shape[3] in (1, 3)
    return "NHWC" if c_last and not c_first else "NCHW"


def _static_dims(shape, layout: str) -> tuple[int | None, int | None, int | None]:
    """(channels, height, width) of an input shape; None where the graph leaves them dynamic."""
    c, h, w = (shape[1], shape[2], shape[3]) if layout == "NCHW" else (shape[3], shape[1], shape[2])

    def static(d) -> int | None:
        return d if isinstance(d, int) and d > 0 else None

    return static(c), static(h), static(w)


def _spec(recorded: dict | None, static, *, size, channels, mean, std, resize, polarity,
          src: Path) -> InputSpec:
    base = dict(recorded or {})
    c_static, h_static, w_static = static
    ch = channels or base.get("channels") or c_static or 3
    if ch not in (1, 3):
        raise ConfigError(f"{src}: megaclass feeds 1- or 3-channel images, the model wants {ch}; "
                          f"pass --channels")
    if channels is not None and base.get("channels") not in (None, channels):
        base.pop("mean", None), base.pop("std", None)  # a per-channel mean/std of another width
    if h_static is not None and w_static is not None and h_static != w_static:
        raise ConfigError(f"{src}: the model wants {h_static}x{w_static} images; megaclass feeds squares")
    fields = {
        "channels": ch,
        "size": size or base.get("size") or h_static,
        "resize": resize or base.get("resize") or ("crop" if ch == 3 else "pad"),
        "polarity": polarity or base.get("polarity") or ("auto" if ch == 1 else "none"),
        "mean": mean if mean is not None else base.get("mean", 0.0),
        "std": std if std is not None else base.get("std", 255.0),
    }
    if fields["size"] is None:
        raise ConfigError(f"{src}: the graph's input size is dynamic; pass --size")
    return InputSpec(channels=int(fields["channels"]), size=int(fields["size"]), resize=fields["resize"],
                     polarity=fields["polarity"], mean=_floats(fields["mean"]), std=_floats(fields["std"]))


def _floats(v) -> tuple[float, ...]:
    return tuple(float(x) for x in (v if isinstance(v, list | tuple) else [v]))


def _check_against_graph(spec: InputSpec, static, layout: str, inp, src: Path) -> None:
    c_static, h_static, _ = static
    if c_static is not None and c_static != spec.channels:
        raise ConfigError(f"{src}: input {inp.name!r} {inp.shape} ({layout}) takes {c_static} channels, "
                          f"not {spec.channels} (check --channels and --layout)")
    if h_static is not None and h_static != spec.size:
        raise ConfigError(f"{src}: input {inp.name!r} {inp.shape} ({layout}) takes {h_static}-px images, "
                          f"not {spec.size} (check --size)")


def _probe(enc: OnnxEncoder, src: Path) -> int:
    """Run a seeded test batch; the output's width, or a typed error naming what is wrong."""
    spec, name = enc.config.input, enc.config.onnx_output
    n = enc.config.fixed_batch or _CHECK_BATCH
    x = np.random.default_rng(0).random((n, spec.channels, spec.size, spec.size), dtype=np.float32)
    try:
        y = enc._forward(x)
    except ModelFormatError as exc:
        raise ModelFormatError(f"{src}: {exc}") from exc.__cause__
    if y.ndim != 2 or y.shape[0] != n:
        raise ModelFormatError(
            f"{src}: output {name!r} has shape {tuple(y.shape)} for a batch of {n}; an embedding "
            f"model must output a 2-D (N, dim) tensor"
        )
    if not np.isfinite(y).all():
        raise ModelFormatError(f"{src}: output {name!r} is not finite (NaN/inf) on a test batch of "
                               f"{n} random images")
    if y.shape[1] < 2:
        raise ModelFormatError(f"{src}: output {name!r} has width {y.shape[1]}; an embedding needs "
                               f"dim >= 2")
    return int(y.shape[1])
