"""Data for ``megaclass bench gallery``: real embeddings of glyph classes (the default) or
random clustered unit vectors (``--data random``, a stress test).

Both write the same files into a folder, read by every system's subprocess:
``templates.npy`` (row ``t * classes + c`` is template ``t`` of class ``c``, memory-mapped),
``owner.npy`` (class of each row), ``mated.npy`` + ``mated_cls.npy`` (mated probes and their
true class), ``non_mated.npy`` (probes of never-enrolled classes) and ``truth.npy`` (the
best class of each mated probe by exact search: what recall@1 is measured against).

Embeddings: glyph classes the encoder never saw (ids from :data:`ENROLL_START`), drawings
``0 .. templates-1`` as templates and drawing ``templates`` as the mated probe; non-mated
probes from classes :data:`NON_MATED_START` on. The encoder is ``model`` when given
(a shipped name such as ``"reference"``: that shipped model); otherwise the shipped
benchmark encoder (:data:`~megaclass.bench.BENCH_MODEL`, the 128-d
``reference-v1`` the recorded numbers were measured with) when this installation has it,
else one trained once with the demo's recipe (:class:`~megaclass.demo.DemoConfig`) and
cached in ``cache/model``. Embeddings are cached per model
fingerprint and size in ``cache/emb-...`` and reused (memory-mapped) by later runs; an
interrupted embedding run resumes where it stopped.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from ..errors import ConfigError, MegaclassError
from . import BENCH_MODEL

ENROLL_START = 1_000_000  # enrolled glyph classes: ids ENROLL_START .. ENROLL_START + classes - 1
NON_MATED_START = 60_000_000  # never-enrolled glyph classes (non-mated probes)
DRAWING_SEED = 1  # drawing stream of templates and probes (training used seed 0)
CHUNK = 8192  # classes embedded per step (bounded memory)


def _exact_truth(mated: np.ndarray, templates: np.ndarray, owner: np.ndarray,
                 chunk: int = 1 << 18) -> np.ndarray:
    from megaclass.gallery.tuning import exact_top1

    rows = ((np.arange(a, min(a + chunk, len(templates))), templates[a:a + chunk])
            for a in range(0, len(templates), chunk))
    return owner[exact_top1(mated, rows)]


def random_data(classes: int, dim: int, templates: int, queries: int, non_mated: int, seed: int,
                path: Path, chunk: int = 1 << 18) -> None:
    """Clustered unit vectors: templates cos ~0.8 to their centre, queries likewise.

    The templates go straight into a memory-mapped file, generated in chunks of classes
    (10M x 128 is 5 GB), and the exact answer of every mated query is found in one pass.
    """
    from megaclass.gallery.vectors import unit_rows as unit

    rng = np.random.default_rng(seed)
    d, n, per = dim, classes, templates

    def noisy(c):
        return unit(c + rng.normal(scale=0.75 / np.sqrt(d), size=c.shape).astype(np.float32))

    mated_cls = rng.integers(0, n, queries)
    mated = np.empty((queries, d), np.float32)
    path.mkdir(parents=True, exist_ok=True)
    tpl = np.lib.format.open_memmap(path / "templates.npy", mode="w+", dtype=np.float32,
                                    shape=(per * n, d))
    for a in range(0, n, chunk):
        centres = unit(rng.normal(size=(min(chunk, n - a), d)).astype(np.float32))
        for t in range(per):
            tpl[t * n + a: t * n + a + len(centres)] = noisy(centres)
        hit = (mated_cls >= a) & (mated_cls < a + len(centres))
        mated[hit] = noisy(centres[mated_cls[hit] - a])
    owner = np.tile(np.arange(n), per)
    nm = noisy(unit(rng.normal(size=(non_mated, d)).astype(np.float32)))
    truth = _exact_truth(mated, tpl, owner)
    tpl.flush()
    del tpl
    _save(path, owner=owner, mated=mated, mated_cls=mated_cls, non_mated=nm, truth=truth)


def _save(path: Path, **arrays) -> None:
    for name, arr in arrays.items():
        np.save(path / f"{name}.npy", arr, allow_pickle=False)


def resolve_model(model: str | None, cache: Path, log=print) -> Path:
    """The encoder directory to embed with: ``model``, the shipped benchmark encoder, or the
    cached demo-recipe model (trained now if the cache has none, a few minutes on CPU)."""
    from megaclass.models.pretrained import resolve_model_path

    if model is not None:  # a folder, or a shipped name (unless a folder of that name exists)
        path = resolve_model_path(model)
        if not (path / "config.json").is_file():
            raise ConfigError(f"-m {model}: not a model directory (no config.json)")
        return path
    try:
        return resolve_model_path(BENCH_MODEL)
    except MegaclassError:
        pass
    cached = cache / "model"
    if (cached / "config.json").is_file():
        return cached
    from megaclass.demo import DemoConfig

    c = DemoConfig()
    log(f"training the benchmark's encoder once with the demo's recipe ({c.train_steps} steps, "
        f"cached in {cached})")
    c.trainer(progress=False).fit().encoder_.save(cached)
    return cached


def embedding_data(model_dir: Path, classes: int, templates: int, queries: int, non_mated: int,
                   seed: int, cache: Path, log=print) -> Path:
    """Embed the benchmark's glyphs with the encoder at ``model_dir`` into a cached folder
    (reused when it exists, resumed when an earlier run stopped part-way); returns it."""
    import torch

    from megaclass.data.glyphs import render_glyphs
    from megaclass.models.encoder import load_encoder

    enc = load_encoder(model_dir)
    fp = getattr(enc, "fingerprint", lambda: "onnx")()
    name = f"emb-{fp}-c{classes}-t{{}}-q{queries}-n{non_mated}-s{seed}"
    path = cache / name.format(templates)
    if (path / "truth.npy").is_file():
        return path
    for more in range(templates + 1, 9):  # a cached set with more templates per class: its first ones
        if (cache / name.format(more) / "truth.npy").is_file():
            return subset(cache / name.format(more), path, templates)
    path.mkdir(parents=True, exist_ok=True)
    n, d = classes, enc.dim
    size = enc.input_spec.size
    if enc.input_spec.channels != 1:
        raise ConfigError(f"{model_dir}: the glyph benchmark needs a 1-channel model, "
                          f"this one takes {enc.input_spec.channels} channels")

    def embed(ids: np.ndarray, drawing: np.ndarray) -> np.ndarray:
        imgs = torch.from_numpy(render_glyphs(ids, drawing, size=size, seed=DRAWING_SEED)).unsqueeze(1)
        return enc.embed(imgs).numpy()

    done_file = path / "progress.json"
    done = json.loads(done_file.read_text())["classes"] if done_file.is_file() else 0
    tpl = np.lib.format.open_memmap(path / "templates.npy", mode="r+" if done else "w+",
                                    dtype=np.float32, shape=(templates * n, d))
    t0 = time.perf_counter()
    for a in range(done, n, CHUNK):
        ids = np.arange(ENROLL_START + a, ENROLL_START + min(a + CHUNK, n), dtype=np.int64)
        for t in range(templates):
            tpl[t * n + a: t * n + a + len(ids)] = embed(ids, np.full(len(ids), t))
        tpl.flush()
        done_file.write_text(json.dumps({"classes": a + len(ids)}))
        rate = (a + len(ids) - done) / (time.perf_counter() - t0)
        log(f"embedded {a + len(ids):,} of {n:,} classes x {templates} "
            f"({rate * templates:,.0f} embeddings/s)")
    rng = np.random.default_rng(seed)
    mated_cls = np.sort(rng.choice(n, min(queries, n), replace=False))
    mated = embed(ENROLL_START + mated_cls, np.full(len(mated_cls), templates))
    nm = embed(np.arange(NON_MATED_START, NON_MATED_START + non_mated, dtype=np.int64),
               np.zeros(non_mated, np.int64))
    owner = np.tile(np.arange(n), templates)
    truth = _exact_truth(mated, tpl, owner)
    del tpl
    (path / "model.json").write_text(json.dumps({"model": str(model_dir), "fingerprint": fp,
                                                 "probe_drawing": templates}))
    _save(path, owner=owner, mated=mated, mated_cls=mated_cls, non_mated=nm, truth=truth)
    return path


def subset(src: Path, dst: Path, templates: int) -> Path:
    """``src`` with only its first ``templates`` templates per class (the same probes, truth
    re-computed), written once; e.g. one template per class from a two-template set."""
    owner = np.load(src / "owner.npy")
    n = int(owner.max()) + 1
    per = len(owner) // n
    if not 1 <= templates <= per:
        raise ConfigError(f"{src} holds {per} templates per class, asked for {templates}")
    dst.mkdir(parents=True, exist_ok=True)
    if not (dst / "truth.npy").is_file():
        tpl = np.load(src / "templates.npy", mmap_mode="r")[: templates * n]
        np.save(dst / "templates.npy", tpl, allow_pickle=False)
        mated = np.load(src / "mated.npy")
        (dst / "model.json").write_text((src / "model.json").read_text())
        own = owner[: templates * n]
        _save(dst, owner=own, mated=mated, mated_cls=np.load(src / "mated_cls.npy"),
              non_mated=np.load(src / "non_mated.npy"), truth=_exact_truth(mated, tpl, own))
    return dst
