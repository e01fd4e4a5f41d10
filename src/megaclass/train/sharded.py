"""Checkpoints of a distributed run: one head shard per rank, and resharding to another world size.

A sharded checkpoint is a plain one (``encoder/``, ``optimizer.safetensors`` of the encoder,
``state.json``) whose ``head/`` is replaced by ``head-shards/rank-RRRRR-of-WWWWW/`` (each
``head.json`` + ``head.safetensors`` with that rank's rows, optimizer state and RNG state)
and whose ``state.json`` records ``world_size``. Every rank writes its own shard into the
same temporary directory (a file system shared by all nodes), rank 0 writes the rest and
renames it into place, so a crash never leaves a half-written checkpoint as the latest.

:func:`reshard` rewrites a checkpoint for another world size, reading only the rows each
new shard needs (``safetensors`` slices); world size 1 gives a plain checkpoint whose
``head/`` loads with :func:`megaclass.heads.load_head` (so its centres export to a gallery).

:func:`export_checkpoint_head` enrolls a checkpoint's class centres into a gallery straight
from its shards (any world size), reading a chunk of rows at a time: no resharding, no
optimizer state loaded. The checkpoint's ``encoder/`` is a plain model directory.

Example
-------
>>> reshard("ckpt/", world=1)  # doctest: +SKIP
>>> export_checkpoint_head("ckpt/", "gallery/")  # doctest: +SKIP
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from ..errors import ConfigError
from ..heads.partial_fc_sharded import shard_range
from ..tensorio import read_json, read_tensors
from .checkpoint import LATEST, flatten_optimizer, latest_checkpoint
from .distributed import DistContext, barrier

SHARDS = "head-shards"


def shard_name(rank: int, world: int) -> str:
    return f"rank-{rank:05d}-of-{world:05d}"


def save_sharded(root, *, ctx: DistContext, encoder, head, optimizer, info: dict) -> Path:
    """Collective: every rank writes its head shard; rank 0 the encoder, optimizer and state."""
    root = Path(root)
    name = f"step-{info['step']:08d}"
    tmp, final = root / f".{name}.tmp", root / name
    if ctx.is_main:
        root.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
    barrier(ctx)
    _write_shard(head, tmp / SHARDS / shard_name(ctx.rank, ctx.world), torch.get_rng_state())
    if ctx.is_main:
        encoder.save(tmp / "encoder")
        tensors, meta = flatten_optimizer(optimizer.state_dict())
        tensors["__rng__"] = torch.get_rng_state()
        save_file(tensors, str(tmp / "optimizer.safetensors"))
    barrier(ctx)
    if ctx.is_main:
        state = {**info, "world_size": ctx.world, "optimizer": meta}
        (tmp / "state.json").write_text(json.dumps(state, indent=1))
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)
        pointer = root / f".{LATEST}.tmp"
        pointer.write_text(name)
        pointer.replace(root / LATEST)
    barrier(ctx)
    return final


def _write_shard(head, out: Path, rng: torch.Tensor | None) -> None:
    out.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu().contiguous() for k, v in head.state_dict().items()}
    if rng is not None:
        tensors["__rng__"] = rng
    save_file(tensors, str(out / "head.safetensors"))
    cfg = {"kind": "megaclass.head", "name": head.name, "num_classes": head.num_classes, "dim": head.dim,
           "hparams": head.hparams(), "class_range": list(head.class_range)}
    (out / "head.json").write_text(json.dumps(cfg, indent=2))


def checkpoint_world(path) -> int:
    """The world size a checkpoint directory was written by (1 for a plain checkpoint)."""
    return int(read_json(Path(path) / "state.json").get("world_size", 1))


def check_shards(path, world: int) -> list[Path]:
    """The shard directories of a checkpoint written by ``world`` ranks; ConfigError if any is missing."""
    path = Path(path)
    dirs = [path / SHARDS / shard_name(r, world) for r in range(world)]
    missing = [r for r, d in enumerate(dirs) if not (d / "head.safetensors").is_file()]
    if missing:
        raise ConfigError(f"checkpoint {path} is incomplete: the head shards of ranks {missing} "
                          f"of {world} are missing")
    return dirs


def load_shard(path, head, ctx: DistContext) -> torch.Tensor | None:
    """Load this rank's shard into ``head``; return the rank's saved RNG state (or None)."""
    world = checkpoint_world(path)
    if world != ctx.world:
        raise ConfigError(f"checkpoint {path} was written by {world} processes, this run has {ctx.world}: "
                          f"run `megaclass reshard {path} --world {ctx.world}` first")
    shard = check_shards(path, world)[ctx.rank]
    cfg = read_json(shard / "head.json")
    if (cfg["num_classes"], cfg["dim"], cfg["name"]) != (head.num_classes, head.dim, head.name):
        raise ConfigError(f"checkpoint {path} holds a {cfg['name']} head of {cfg['num_classes']} classes x "
                          f"{cfg['dim']}, this run builds {head.name} {head.num_classes} x {head.dim}")
    tensors = read_tensors(shard / "head.safetensors")
    rng = tensors.pop("__rng__", None)
    head.load_state_dict(tensors)
    return rng


def _sources(ckpt: Path) -> list[tuple[Path, tuple[int, int]]]:
    """``(safetensors file, class range)`` of every head part of a checkpoint, in class order."""
    world = checkpoint_world(ckpt)
    if world == 1:
        cfg = read_json(ckpt / "head" / "head.json")
        return [(ckpt / "head" / "head.safetensors", (0, int(cfg["num_classes"])))]
    parts = []
    for d in check_shards(ckpt, world):
        parts.append((d / "head.safetensors", tuple(read_json(d / "head.json")["class_range"])))
    return parts


def is_checkpoint(path) -> bool:
    """True for a checkpoint step directory or a ``--checkpoint-dir`` holding one; ConfigError
    for one rank's shard directory (it holds a part of the classes only)."""
    path = Path(path)
    if path.parent.name == SHARDS and (path / "head.json").is_file():
        raise ConfigError(f"{path} is one rank's shard of a checkpoint: give the checkpoint "
                          f"directory {path.parent.parent} instead")
    return (path / "state.json").is_file() or latest_checkpoint(path) is not None


def resolve_checkpoint(path) -> Path:
    """``path`` itself when it is a checkpoint step directory, else the latest one under it."""
    ckpt = Path(path)
    if not (ckpt / "state.json").is_file():
        latest = latest_checkpoint(ckpt) if ckpt.is_dir() else None
        if latest is None:
            raise ConfigError(f"{path} is not a megaclass checkpoint (no state.json, no 'latest')")
        ckpt = latest
    return ckpt


def checkpoint_centres(path, chunk: int = 100_000):
    """``(lo, hi, centres)`` over a checkpoint's head, ``chunk`` rows at a time: the L2-normalised
    float32 centres of classes ``[lo, hi)``, read from each shard in turn (or the plain head/)."""
    ckpt = resolve_checkpoint(path)
    cfg = read_json(_sources(ckpt)[0][0].parent / "head.json")
    if cfg["name"] != "partial_fc" and checkpoint_world(ckpt) > 1:
        raise ConfigError(f"checkpoint {ckpt} holds a sharded {cfg['name']} head: only partial_fc is sharded")
    if checkpoint_world(ckpt) == 1:  # any head: its own class_centers()
        from ..heads import load_head

        centres = load_head(ckpt / "head").class_centers()
        if centres is None:
            raise ConfigError(f"the {cfg['name']} head of {ckpt} has no class centres to export")
        for lo in range(0, centres.shape[0], chunk):
            yield lo, min(lo + chunk, centres.shape[0]), centres[lo: lo + chunk]
        return
    for file, (a, b) in _sources(ckpt):
        with safe_open(str(file), framework="pt") as f:
            rows = f.get_slice("weight")
            for lo in range(a, b, chunk):
                hi = min(b, lo + chunk)
                yield lo, hi, torch.nn.functional.normalize(rows[lo - a: hi - a].float(), dim=1)


def export_checkpoint_head(path, gallery, *, labels=None, replace: bool = False, chunk: int = 100_000):
    """Enroll each class centre of a checkpoint's head (sharded or not) as a one-template class
    of ``gallery`` (a path or Gallery), chunk by chunk; return ``(open gallery, head.json)``.

    ``labels``: one name per class (default ``class-<id>``), as :func:`megaclass.heads.export_to_gallery`.
    """
    from ..gallery import Gallery

    ckpt = resolve_checkpoint(path)
    cfg = read_json(_sources(ckpt)[0][0].parent / "head.json")
    n, dim = int(cfg["num_classes"]), int(cfg["dim"])
    names = [f"class-{i}" for i in range(n)] if labels is None else [str(x) for x in labels]
    if len(names) != n:
        raise ConfigError(f"{len(names)} labels for a head of {n} classes")
    g = gallery if isinstance(gallery, Gallery) else Gallery.open(os.fspath(gallery), dim=dim)
    for lo, hi, centres in checkpoint_centres(ckpt, chunk):
        arr = centres.numpy()
        g.enroll_many(((names[i], arr[i - lo: i - lo + 1]) for i in range(lo, hi)), replace=replace)
    return g, cfg


def reshard(path, world: int, *, out=None) -> Path:
    """Rewrite checkpoint ``path`` (a step directory, or a checkpoint root: its latest) for ``world``
    ranks, in place unless ``out`` names a new directory. Returns the rewritten directory.

    New rank ``r`` keeps the RNG state of old rank ``r`` (rank 0's when there was none)."""
    ckpt = resolve_checkpoint(path)
    if isinstance(world, bool) or not isinstance(world, int) or world < 1:
        raise ConfigError(f"--world must be a positive integer, got {world!r}")
    old = checkpoint_world(ckpt)
    sources = _sources(ckpt)
    first_cfg = read_json(sources[0][0].parent / "head.json")
    classes = int(first_cfg["num_classes"])
    if world > classes:
        raise ConfigError(f"{classes} classes cannot be sharded over {world} processes")
    target = Path(out) if out is not None else ckpt
    tmp = target.parent / f".{target.name}.reshard.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(ckpt / "encoder", tmp / "encoder")
    shutil.copy2(ckpt / "optimizer.safetensors", tmp / "optimizer.safetensors")
    rngs = [_rng_of(f) for f, _ in sources] if old > 1 else [_rng_of(ckpt / "optimizer.safetensors")]
    for r in range(world):
        lo, hi = shard_range(classes, r, world)
        tensors = _rows(sources, lo, hi)
        rng = rngs[r] if r < len(rngs) and rngs[r] is not None else rngs[0]
        cfg = {k: first_cfg[k] for k in ("kind", "name", "num_classes", "dim", "hparams")}
        dest = tmp / "head" if world == 1 else tmp / SHARDS / shard_name(r, world)
        dest.mkdir(parents=True, exist_ok=True)
        if world > 1:
            cfg["class_range"] = [lo, hi]
            if rng is not None:
                tensors["__rng__"] = rng
        save_file(tensors, str(dest / "head.safetensors"))
        (dest / "head.json").write_text(json.dumps(cfg, indent=2))
    state = read_json(ckpt / "state.json")
    state.pop("world_size", None)
    if world > 1:
        state["world_size"] = world
    (tmp / "state.json").write_text(json.dumps(state, indent=1))
    if target.exists():
        old_dir = target.parent / f".{target.name}.old"
        shutil.rmtree(old_dir, ignore_errors=True)
        target.rename(old_dir)
        tmp.rename(target)
        shutil.rmtree(old_dir)
    else:
        tmp.rename(target)
    return target


def _rng_of(file: Path) -> torch.Tensor | None:
    with safe_open(str(file), framework="pt") as f:
        return f.get_tensor("__rng__") if "__rng__" in f.keys() else None


def _rows(sources, lo: int, hi: int) -> dict[str, torch.Tensor]:
    """Rows [lo, hi) of every per-class tensor, read slice by slice; scalars from the first part."""
    out: dict[str, list[torch.Tensor]] = {}
    scalars: dict[str, torch.Tensor] = {}
    for file, (a, b) in sources:
        with safe_open(str(file), framework="pt") as f:
            for key in f.keys():
                if key == "__rng__":
                    continue
                sl = f.get_slice(key)
                if len(sl.get_shape()) == 0:
                    scalars.setdefault(key, f.get_tensor(key))
                elif max(a, lo) < min(b, hi):
                    out.setdefault(key, []).append(sl[max(a, lo) - a: min(b, hi) - a])
    return {**{k: torch.cat(v).contiguous() for k, v in out.items()}, **scalars}
