"""``megaclass bench data``: is data loading the bottleneck when training from a folder?

Two generated, deterministic folders (reused when ``data`` names a folder that holds them):

* **jpeg**: ``images`` full-size colour JPEGs (default 1,000 at 640x480, quality 90) in
  ``classes`` class folders; each class has its own two-colour gradient and three shapes,
  each image moves and recolours them a little and adds noise. Trained as a 3-channel
  112-px model (the ``photo`` input contract: centre crop).
* **png**: ``png_images`` procedural glyphs (:mod:`megaclass.data.glyphs`) written as
  1-channel PNGs of ``png_size`` px, trained as a 1-channel model of that size.

For each, the same model (``widths``, ``dim``), head (CosFace), batch and seed are trained
through :class:`~megaclass.train.Trainer` with its default workers, the main process using
``threads`` torch threads (default 1: on this 2-core box shared with other work, 2 threads
trained 3-5x *slower* than 1, spin-waiting; measured 2026-11-30), from:

* ``memory``: an :class:`~megaclass.data.arrays.ArraySource` holding the decoded images
  as float tensors (the baseline: no loading cost but indexing and collating);
* ``folder_cache``: an :class:`~megaclass.data.folder.ImageFolderSource` with the cache,
  ``verify=False`` so that the first epoch builds the cache in the DataLoader workers;
* ``folder_no_cache``: the same folder decoding every file at every access (reference).

Epoch boundaries are read in the main process from the trainer's ``set_epoch`` call at
the start of each epoch (a thin wrapper source records the time), so the first epoch
includes starting the workers and, for the cache, decoding every file; the *steady* rate
is images over wall time of epochs 2 onwards. Ratios are against ``memory`` in the same
run. With ``rounds > 1`` the arms run again in reverse order (ABC CBA ...) and each rate
is images over the summed wall time of all its rounds, so that a change in the load of a
shared machine falls on every arm alike. The verification pass a default
``ImageFolderSource`` runs at construction (decode every file once in worker processes,
filling the cache) is timed too.

Example
-------
>>> report = run_data_bench("/tmp/bench", DataBenchConfig(images=40, classes=4, png_images=40,
...                         epochs=2, batch=8, jpeg_size=(64, 48), size=16, png_size=16))  # doctest: +SKIP
"""

from __future__ import annotations

import gc
import json
import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

ARMS = ("memory", "folder_cache", "folder_no_cache")


@dataclass
class DataBenchConfig:
    """What ``bench data`` generates and trains (see the module docstring)."""

    images: int = 1000
    classes: int = 100
    jpeg_size: tuple[int, int] = (640, 480)
    size: int = 112
    png_images: int = 2000
    png_size: int = 32
    epochs: int = 3
    rounds: int = 1
    steps: int | None = None
    batch: int = 128
    m_per_class: int = 4
    widths: tuple[int, ...] = (16, 32, 64)
    dim: int = 128
    threads: int | None = 1
    seed: int = 0

    def validate(self) -> None:
        from ..errors import ConfigError

        if self.classes < 2 or self.images < 2 * self.classes or self.png_images < 2 * self.classes:
            raise ConfigError(f"bench data needs >= 2 classes and >= 2 images per class, got "
                              f"{self.images} JPEGs / {self.png_images} PNGs in {self.classes} classes")
        if self.rounds < 1:
            raise ConfigError(f"rounds must be >= 1, got {self.rounds}")
        if self.epochs < 2 and not self.steps:
            raise ConfigError("bench data needs --epochs >= 2 (the steady rate is from epoch 2 on)")
        if min(self.jpeg_size) < 8 or self.size < 8 or self.png_size < 8:
            raise ConfigError("image and model sizes must be >= 8 px")


# --------------------------------------------------------------------------- data
def _class_style(rng: np.random.Generator) -> dict:
    return {"colours": rng.integers(0, 256, (2, 3)), "angle": rng.uniform(0, 2 * np.pi),
            "shapes": [(int(rng.integers(0, 3)), rng.uniform(0.15, 0.85, 2), rng.uniform(0.08, 0.25),
                        rng.integers(0, 256, 3)) for _ in range(3)]}


def _photo(style: dict, rng: np.random.Generator, w: int, h: int):
    """One image of a class: its gradient and shapes, moved and recoloured a little, plus noise."""
    from PIL import Image, ImageDraw

    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    a = style["angle"] + rng.normal(0, 0.2)
    t = (xx * np.cos(a) + yy * np.sin(a)) / (w + h) + 0.5
    c0, c1 = style["colours"].astype(np.float32)
    img = c0 + (c1 - c0) * np.clip(t, 0, 1)[..., None] + rng.normal(0, 12, 3)
    pil = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(pil)
    for kind, centre, radius, colour in style["shapes"]:
        cx, cy = (centre + rng.normal(0, 0.04, 2)) * (w, h)
        r = radius * min(w, h) * rng.uniform(0.85, 1.15)
        fill = tuple(int(v) for v in np.clip(colour + rng.normal(0, 15, 3), 0, 255))
        box = (cx - r, cy - r, cx + r, cy + r)
        if kind == 0:
            draw.ellipse(box, fill=fill)
        elif kind == 1:
            draw.rectangle(box, fill=fill)
        else:
            draw.polygon([(cx, cy - r), (cx + r, cy + r), (cx - r, cy + r)], fill=fill)
    arr = np.asarray(pil, dtype=np.float32) + rng.normal(0, 6, (h, w, 3)).astype(np.float32)
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))


def _ready(root: Path, manifest: dict) -> bool:
    try:
        return json.loads((root / "manifest.json").read_text()) == manifest
    except (OSError, ValueError):
        return False


def make_jpeg_folder(root: str | os.PathLike, *, images: int, classes: int, size: tuple[int, int],
                     seed: int = 0) -> Path:
    """Write ``images`` colour JPEGs in ``classes`` folders (deterministic; reused if present)."""
    root = Path(root)
    manifest = {"kind": "jpeg", "images": images, "classes": classes, "size": list(size), "seed": seed}
    if _ready(root, manifest):
        return root
    shutil.rmtree(root, ignore_errors=True)
    w, h = size
    per, extra = divmod(images, classes)
    for c in range(classes):
        style = _class_style(np.random.default_rng([seed, c]))
        folder = root / f"class{c:04d}"
        folder.mkdir(parents=True)
        for i in range(per + (c < extra)):
            _photo(style, np.random.default_rng([seed, c, i]), w, h).save(folder / f"{i:04d}.jpg", quality=90)
    (root / "manifest.json").write_text(json.dumps(manifest))
    return root


def make_png_folder(root: str | os.PathLike, *, images: int, classes: int, size: int, seed: int = 0) -> Path:
    """Write ``images`` glyph drawings as 1-channel PNGs in ``classes`` folders (reused if present)."""
    from PIL import Image

    from ..data.glyphs import GlyphSource

    root = Path(root)
    manifest = {"kind": "png", "images": images, "classes": classes, "size": size, "seed": seed}
    if _ready(root, manifest):
        return root
    shutil.rmtree(root, ignore_errors=True)
    per, extra = divmod(images, classes)
    for c in range(classes):
        folder = root / f"glyph{c:04d}"
        folder.mkdir(parents=True)
        drawings = GlyphSource.samples(c, per + (c < extra), seed=seed, size=size)
        for i, x in enumerate(drawings):
            Image.fromarray((x[0].numpy() * 255).round().astype(np.uint8), "L").save(folder / f"{i:04d}.png")
    (root / "manifest.json").write_text(json.dumps(manifest))
    return root


# --------------------------------------------------------------------------- timing
class _EpochClock:
    """A source that records when the trainer starts each epoch (in the main process)."""

    def __init__(self, source) -> None:
        self.source = source
        self.marks: list[float] = []
        self._pid = os.getpid()
        self._epoch: int | None = None
        self.num_classes, self.size = source.num_classes, source.size
        self.input_spec = getattr(source, "input_spec", None)
        self.decodes_files = getattr(source, "decodes_files", False)

    @property
    def class_names(self) -> list[str]:
        return self.source.class_names

    @property
    def labels(self) -> np.ndarray:
        return self.source.labels

    def set_epoch(self, epoch: int) -> None:
        if os.getpid() == self._pid and epoch != self._epoch:  # the first call of each epoch
            self.marks.append(time.perf_counter())
        self._epoch = epoch
        if hasattr(self.source, "set_epoch"):
            self.source.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, i):
        return self.source[i]

    def iter_classes(self):
        return self.source.iter_classes()

    def __getitems__(self, indices):
        if hasattr(self.source, "__getitems__"):
            return self.source.__getitems__(indices)
        return [self.source[i] for i in indices]


def _train(source, cfg: DataBenchConfig) -> dict:
    from ..train import Trainer
    from ..train.loading import default_num_workers

    clock = _EpochClock(source)
    trainer = Trainer(clock, head="cosface", epochs=cfg.epochs, steps=cfg.steps, batch_size=cfg.batch,
                      m_per_class=cfg.m_per_class, dim=cfg.dim, widths=cfg.widths, seed=cfg.seed,
                      progress=False)
    started = time.perf_counter()
    trainer.fit()
    ended = time.perf_counter()
    steps = len(trainer.history_)
    del trainer
    gc.collect()  # the persistent workers go with the trainer's DataLoader
    batch = min(cfg.batch // cfg.m_per_class, source.num_classes) * cfg.m_per_class
    per_epoch = max(1, len(source) // batch)
    marks = clock.marks + [ended]
    epochs = []
    for k in range(len(marks) - 1):
        n = min(per_epoch, steps - k * per_epoch) * batch
        dt = marks[k + 1] - marks[k]
        epochs.append({"epoch": k + 1, "images": n, "seconds": dt, "images_per_s": n / dt})
    later = epochs[1:]
    steady = (sum(e["images"] for e in later) / sum(e["seconds"] for e in later)) if later else None
    return {"workers": default_num_workers(source), "batch": batch, "steps": steps,
            "fit_seconds": ended - started,
            "setup_seconds": clock.marks[0] - started if clock.marks else None,
            "epochs": epochs, "first_epoch_images_per_s": epochs[0]["images_per_s"],
            "steady_images_per_s": steady}


def _combine(arm: str, rows: list[dict]) -> dict:
    """One arm over its rounds: rates are images over summed wall time (epoch 1, epochs 2+)."""
    first = sum(r["epochs"][0]["images"] for r in rows) / sum(r["epochs"][0]["seconds"] for r in rows)
    later = [e for r in rows for e in r["epochs"][1:]]
    steady = sum(e["images"] for e in later) / sum(e["seconds"] for e in later) if later else None
    return {"arm": arm, **{k: rows[0][k] for k in ("workers", "batch", "steps", "cache_mode")},
            "first_epoch_images_per_s": first, "steady_images_per_s": steady,
            "epochs": rows[0]["epochs"], "rounds": rows}


def _dataset(name: str, root: Path, spec, cfg: DataBenchConfig, log) -> dict:
    import torch

    from ..data.arrays import ArraySource
    from ..data.folder import ImageFolderSource, _verify_workers

    t0 = time.perf_counter()
    verified = ImageFolderSource(root, spec=spec)  # the default: verify, filling the cache in workers
    verify_s = time.perf_counter() - t0
    n, classes = len(verified), verified.num_classes
    images = torch.stack([x for x, _ in verified.__getitems__(list(range(n)))])
    labels, names = verified.labels, verified.class_names
    sources = {
        "memory": lambda: ArraySource(images, labels, spec=spec, class_names=names),
        "folder_cache": lambda: ImageFolderSource(root, spec=spec, verify=False),
        "folder_no_cache": lambda: ImageFolderSource(root, spec=spec, verify=False, cache=False),
    }
    del verified
    runs: dict[str, list[dict]] = {arm: [] for arm in ARMS}
    for r in range(cfg.rounds):
        for arm in ARMS if r % 2 == 0 else ARMS[::-1]:  # ABC CBA ...: load drift hits every arm
            log and log(f"{name}: training from {arm} ({cfg.epochs} epochs, round {r + 1}/{cfg.rounds})")
            t0 = time.perf_counter()
            source = sources[arm]()
            open_s = time.perf_counter() - t0
            cache = getattr(source, "cache", None)
            row = {"open_seconds": open_s, "cache_mode": getattr(cache, "mode", None), **_train(source, cfg)}
            if arm == "folder_cache" and cache is not None:
                row["filled_after"] = cache.filled_count
            runs[arm].append(row)
            del source
            gc.collect()
    arms = [_combine(arm, rows) for arm, rows in runs.items()]
    base = arms[0]

    def ratio(arm: str, key: str):
        a = next(r for r in arms if r["arm"] == arm)
        return a[key] / base[key] if a[key] and base[key] else None

    for summary in arms:
        summary["steady_vs_memory"] = ratio(summary["arm"], "steady_images_per_s")
        summary["first_epoch_vs_memory"] = ratio(summary["arm"], "first_epoch_images_per_s")
    return {"name": name, "images": n, "classes": classes,
            "input": spec.to_dict(), "verify_fill": {"seconds": verify_s, "images_per_s": n / verify_s,
                                                      "workers": _verify_workers(n)},
            "arms": arms,
            "ratios": {
                "folder_cache_steady_vs_memory": ratio("folder_cache", "steady_images_per_s"),
                "folder_cache_first_epoch_vs_memory": ratio("folder_cache", "first_epoch_images_per_s"),
                "folder_no_cache_steady_vs_memory": ratio("folder_no_cache", "steady_images_per_s")}}


def run_data_bench(out: str | os.PathLike, cfg: DataBenchConfig | None = None, *,
                   data: str | os.PathLike | None = None, log=print) -> dict:
    """Generate the folders (in ``data`` or a temporary directory), train every arm, write
    ``data_bench.json`` and ``data_bench.png`` under ``out``; return the report."""
    import torch

    from ..data.input_spec import InputSpec

    cfg = cfg or DataBenchConfig()
    cfg.validate()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tmp = None if data is not None else tempfile.mkdtemp(prefix="megaclass-bench-data-")
    base = Path(tmp) if tmp is not None else Path(data or ".")
    started = time.perf_counter()
    load_before = os.getloadavg()
    threads_before = torch.get_num_threads()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    try:
        w, h = cfg.jpeg_size
        log and log(f"writing {cfg.images:,} {w}x{h} JPEGs and {cfg.png_images:,} {cfg.png_size}-px PNGs "
                    f"under {base}")
        t0 = time.perf_counter()
        jpegs = make_jpeg_folder(base / f"jpeg-{w}x{h}-{cfg.images}-{cfg.classes}", images=cfg.images,
                                 classes=cfg.classes, size=cfg.jpeg_size, seed=cfg.seed)
        pngs = make_png_folder(base / f"png-{cfg.png_size}-{cfg.png_images}-{cfg.classes}",
                               images=cfg.png_images, classes=cfg.classes, size=cfg.png_size, seed=cfg.seed)
        generate_s = time.perf_counter() - t0
        datasets = [
            _dataset("jpeg", jpegs, InputSpec.preset("photo", size=cfg.size), cfg, log),
            _dataset("png", pngs, InputSpec.preset("handwriting", size=cfg.png_size), cfg, log),
        ]
    finally:
        torch.set_num_threads(threads_before)
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    report = {"config": {**asdict(cfg), "jpeg_size": list(cfg.jpeg_size), "widths": list(cfg.widths),
                         "head": "cosface", "data": str(data) if data is not None else None},
              "machine": {"cpus": os.cpu_count(), "torch_threads": cfg.threads or threads_before,
                          "load_average_before": list(load_before),
                          "load_average_after": list(os.getloadavg())},
              "generate_seconds": generate_s, "datasets": datasets,
              "seconds": time.perf_counter() - started}
    (out / "data_bench.json").write_text(json.dumps(report, indent=1))
    _plot(datasets, out / "data_bench.png")
    return report


def _plot(datasets: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(datasets), figsize=(5.5 * len(datasets), 4))
    for ax, d in zip(np.atleast_1d(axes), datasets, strict=True):
        names = [a["arm"] for a in d["arms"]]
        x = np.arange(len(names))
        ax.bar(x - 0.2, [a["first_epoch_images_per_s"] for a in d["arms"]], 0.4, label="epoch 1")
        ax.bar(x + 0.2, [a["steady_images_per_s"] or 0 for a in d["arms"]], 0.4, label="epochs 2+")
        ax.set_xticks(x, names, fontsize=8)
        spec = d["input"]
        ax.set_title(f"{d['name']}: {d['images']:,} images, {spec['channels']}-ch {spec['size']} px")
        ax.set_ylabel("training images/s")
        ax.grid(True, axis="y", alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
