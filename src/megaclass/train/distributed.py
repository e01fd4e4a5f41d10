"""The process group of a distributed training job, and what every rank must agree on.

A job is started by torch's elastic launcher (``megaclass train --nproc N`` or ``torchrun``),
which sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` and the rendezvous address in each
process's environment. :func:`init_from_env` joins the group: backend ``nccl`` when every
local rank has a GPU, else ``gloo`` (overridable), with a timeout on every collective so a
rank that dies or hangs stops the others with :class:`DistributedError` instead of a silent
hang. The head's collectives run on a second group of their own.

The encoder is data-parallel (``DistributedDataParallel``) with gradients *summed* over
ranks: the sharded head's loss is already the mean over the global batch, and each rank's
embeddings get exactly their gradient of it, so the sum is the single-process gradient.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from ..errors import ConfigError
from ..errors import DistributedError as DistributedError  # re-exported: defined in errors.py

#: Seconds a collective may wait for the other ranks before the job is declared broken.
DEFAULT_TIMEOUT = 300.0
BACKENDS = ("auto", "gloo", "nccl")


@dataclass
class DistContext:
    """Where this process sits in the job.

    Attributes
    ----------
    rank, world, local_rank : ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` of the launcher.
    backend : ``"gloo"`` or ``"nccl"``.
    device : the training device of this rank (``cuda:LOCAL_RANK`` with nccl).
    head_group : process group of the sharded head's collectives.
    timeout : seconds a collective waits before failing.
    """

    rank: int
    world: int
    local_rank: int
    backend: str
    device: torch.device
    head_group: object
    timeout: float

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def launched_world() -> int | None:
    """``WORLD_SIZE`` when this process was started by a torch launcher, else None."""
    if "TORCHELASTIC_RUN_ID" not in os.environ and "MASTER_ADDR" not in os.environ:
        return None
    try:
        return int(os.environ["WORLD_SIZE"])
    except (KeyError, ValueError):
        return None


def pick_backend(name: str = "auto", local_rank: int = 0) -> str:
    """``nccl`` when this rank has its own GPU, else ``gloo``; an explicit name is checked."""
    if name not in BACKENDS:
        raise ConfigError(f"backend must be one of {', '.join(BACKENDS)}, got {name!r}")
    has_gpu = torch.cuda.is_available() and torch.cuda.device_count() > local_rank
    if name == "auto":
        return "nccl" if has_gpu else "gloo"
    if name == "nccl" and not has_gpu:
        raise ConfigError(f"backend nccl needs a GPU for local rank {local_rank}; torch sees "
                          f"{torch.cuda.device_count()} here: use --backend gloo")
    return name


def init_from_env(backend: str = "auto", timeout: float = DEFAULT_TIMEOUT) -> DistContext:
    """Join the job described by the launcher's environment variables."""
    try:
        rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
        local_rank = int(os.environ.get("LOCAL_RANK", 0))
    except (KeyError, ValueError):
        raise ConfigError("not started by a torch launcher (RANK/WORLD_SIZE unset): use "
                          "`megaclass train --nproc N` or torchrun") from None
    if not timeout > 0:
        raise ConfigError(f"the distributed timeout must be > 0 seconds, got {timeout}")
    backend = pick_backend(backend, local_rank)
    device = torch.device("cpu")
    if backend == "nccl":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    limit = timedelta(seconds=timeout)
    if not dist.is_initialized():
        dist.init_process_group(backend, timeout=limit)
    head_group = dist.new_group(backend=backend, timeout=limit)
    return DistContext(rank, world, local_rank, backend, device, head_group, float(timeout))


def shutdown() -> None:
    """Leave the process group (safe to call when not in one)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier(ctx: DistContext) -> None:
    """Wait for every rank; with gloo, a rank missing after the timeout is named."""
    if ctx.backend == "gloo":
        dist.monitored_barrier(timeout=timedelta(seconds=ctx.timeout), wait_all_ranks=True)
    else:
        dist.barrier()


def check_same_options(ctx: DistContext, options: dict) -> None:
    """Raise :class:`ConfigError` on every rank when the ranks were given different options.

    Each rank's options (as canonical JSON) are all-gathered as bytes; rank 0's message names
    the options that differ and the ranks that differ."""
    mine = json.dumps(options, sort_keys=True, default=str).encode()
    digest = torch.tensor(list(hashlib.sha256(mine).digest()[:8]), dtype=torch.uint8)
    digests = [torch.empty_like(digest) for _ in range(ctx.world)]
    dist.all_gather(digests, digest)
    if all(torch.equal(d, digests[0]) for d in digests):
        return
    size = torch.tensor([len(mine)])
    sizes = [torch.empty_like(size) for _ in range(ctx.world)]
    dist.all_gather(sizes, size)
    longest = int(max(sizes))
    padded = torch.zeros(longest, dtype=torch.uint8)
    padded[: len(mine)] = torch.tensor(list(mine), dtype=torch.uint8)
    texts = [torch.empty_like(padded) for _ in range(ctx.world)]
    dist.all_gather(texts, padded)
    docs = [json.loads(bytes(t[: int(n)].tolist())) for t, n in zip(texts, sizes, strict=True)]
    bad = sorted({k for d in docs[1:] for k in set(d) | set(docs[0]) if d.get(k) != docs[0].get(k)})
    ranks = [r for r, d in enumerate(docs) if d != docs[0]]
    raise ConfigError(f"ranks {ranks} were started with options different from rank 0's: "
                      f"{', '.join(bad)}; every process must get the same options")


def wrap_encoder(encoder: torch.nn.Module, ctx: DistContext) -> torch.nn.Module:
    """``DistributedDataParallel`` over ``encoder`` whose gradients are summed, not averaged."""
    from torch.nn.parallel import DistributedDataParallel

    ids = [ctx.device.index] if ctx.device.type == "cuda" else None
    ddp = DistributedDataParallel(encoder, device_ids=ids, forward_sync_buffers=False)
    ddp.register_comm_hook(None, _sum_hook)
    return ddp


def _sum_hook(state, bucket):
    """DDP communication hook: all-reduce SUM of the bucket (the default divides by W)."""
    fut = dist.all_reduce(bucket.buffer(), async_op=True).get_future()
    return fut.then(lambda f: f.value()[0])


def comm_bytes_per_step(batch: int, dim: int, world: int, encoder_params: int = 0,
                        emb_bytes: int = 4, label_bytes: int = 8) -> dict[str, int]:
    """Bytes one rank sends per training step (ring algorithms; each rank receives as much).

    With ``B`` the global batch, ``D`` the dimension, ``W`` ranks and ``P`` encoder
    parameters: all-gather of embeddings and labels ``(W-1)/W * B * (4D + 8)``; all-reduce
    of the softmax max, sum of exponentials and target logit ``2 (W-1)/W * 3B * 4``;
    reduce-scatter of the embedding gradients ``(W-1)/W * 4BD``; DDP all-reduce of the
    encoder gradients ``2 (W-1)/W * 4P``. None depends on the number of classes C.

    >>> comm_bytes_per_step(256, 256, 2)["total"]
    266240
    """
    f = (world - 1) / world
    exact = {"all_gather": f * batch * (dim * emb_bytes + label_bytes),
             "normaliser": 2 * f * 3 * batch * 4,
             "embedding_grad": f * batch * dim * emb_bytes,
             "encoder_grad": 2 * f * encoder_params * 4}
    parts = {k: int(round(v)) for k, v in exact.items()}
    parts["total"] = sum(parts.values())
    return parts


def describe_failure(exc: BaseException, ctx: DistContext) -> str:
    """A one-line reason for a collective that failed (a peer died, hung or left)."""
    text = " ".join(str(exc).split())[:200].replace("[", "(").replace("]", ")")  # no rich markup
    low = text.lower()
    # gloo says "Rank 1 failed to pass monitoredBarrier in 15000 ms" when a peer hangs at a barrier
    if "timed out" in low or "timeout" in low or "failed to pass monitoredbarrier" in low:
        why = f"no answer from another rank within {ctx.timeout:.0f} s (it hung or died)"
    else:
        why = "another rank died or closed its connection"
    return f"rank {ctx.rank}/{ctx.world}: distributed training stopped: {why} ({text})"
