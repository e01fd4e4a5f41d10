"""Start N local training processes with torch's elastic launcher (what ``torchrun`` runs).

``megaclass train ... --nproc N`` calls :func:`launch` with the command
``python -m megaclass.train ...`` (the same options minus ``--nproc``): a
``torch.distributed.launcher.api.elastic_launch`` agent on this machine, with a c10d
rendezvous on a free local port (``torchrun --standalone``) and no restarts. When a
worker fails, the agent stops the others and :func:`launch` raises one
:class:`~megaclass.train.distributed.DistributedError` naming which ranks failed and how.
Across machines, run ``torchrun --nnodes M --nproc-per-node N --rdzv-backend c10d
--rdzv-endpoint HOST:PORT -m megaclass.train ...`` on each instead.

Example
-------
>>> launch(2, sys.executable, ["-m", "megaclass.train", "glyphs:0-100", "-m", "out/",
...                            "--head", "partial_fc"])  # doctest: +SKIP
"""

from __future__ import annotations

import os
import signal
import sys
import uuid
from collections.abc import Callable, Sequence

from ..errors import ConfigError
from .distributed import DistributedError


def launch(nproc: int, entrypoint: str | Callable, args: Sequence = (), *,
           monitor_interval: float = 0.2) -> dict:
    """Run ``entrypoint(*args)`` (a function) or the command ``entrypoint args...`` in ``nproc``
    local processes; return ``{rank: return value}`` (None for a command)."""
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    if isinstance(nproc, bool) or not isinstance(nproc, int) or nproc < 1:
        raise ConfigError(f"--nproc must be a positive integer, got {nproc!r}")
    # one intra-op thread share per process, unless the user set it (N processes on N cores)
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
    config = LaunchConfig(min_nodes=1, max_nodes=1, nproc_per_node=nproc, run_id=uuid.uuid4().hex[:12],
                          rdzv_backend="c10d", rdzv_endpoint="localhost:0", max_restarts=0,
                          monitor_interval=monitor_interval, start_method="spawn", shutdown_timeout=10)
    try:
        return elastic_launch(config, entrypoint)(*args)
    except ChildFailedError as exc:
        raise DistributedError(summarize_failures(exc.failures, nproc)) from None


def summarize_failures(failures: dict, nproc: int) -> str:
    """One line: which ranks failed and how (exit status or signal)."""
    parts = []  # the cause first: ranks the agent stopped (SIGTERM) come last
    for rank in sorted(failures, key=lambda r: (failures[r].exitcode == -signal.SIGTERM, r)):
        f = failures[rank]
        code = f.exitcode
        if code is not None and code < 0:
            try:
                how = f"was killed by {signal.Signals(-code).name}"
            except ValueError:
                how = f"was killed by signal {-code}"
        else:
            how = f"exited with status {code}"
        parts.append(f"rank {rank} (pid {f.pid}) {how}")
    return (f"distributed training stopped ({nproc} processes): {'; '.join(parts)}; the other ranks "
            "were stopped; resume from the last checkpoint with --resume")


def worker_command(argv: Sequence[str]) -> list[str]:
    """``python -m megaclass.train`` arguments for the workers: ``argv`` minus ``--nproc N``."""
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
            continue
        if a == "--nproc":
            skip = True
            continue
        if a.startswith("--nproc="):
            continue
        out.append(a)
    return ["-m", "megaclass.train", *out]


LAUNCHED = "launched"


def plan_distributed(nproc: int | None, backend: str, timeout: float, source, options: dict,
                     argv: Sequence[str]):
    """What ``megaclass train`` does about processes: None (train here, one process),
    :data:`LAUNCHED` (``--nproc N``: the N workers were started here, trained and saved), or
    the :class:`~megaclass.train.distributed.DistContext` of this worker (under a launcher).

    Bad input (``--nproc 0``, more processes than classes, a head or options a distributed
    run cannot train, resuming a checkpoint of another world size) is refused here, before
    any process starts or anything is written."""
    from .checkpoint import latest_checkpoint
    from .dist_trainer import check_distributed_options
    from .distributed import init_from_env, launched_world, pick_backend
    from .sharded import checkpoint_world
    from .trainer import Trainer

    world = launched_world()
    if world is not None:
        if nproc is not None:
            raise ConfigError("--nproc starts local processes; under torchrun leave it out "
                              "(torchrun's --nproc-per-node sets the processes)")
        return init_from_env(backend, timeout) if world > 1 else None
    if nproc is None or nproc == 1:
        return None
    config = Trainer(source, **options).config  # validates the options once, here
    check_distributed_options(config, source.num_classes, nproc)
    pick_backend(backend)
    if config.resume and config.checkpoint_dir:
        last = latest_checkpoint(config.checkpoint_dir)
        if last is not None and checkpoint_world(last) != nproc:
            raise ConfigError(f"checkpoint {last} was written by {checkpoint_world(last)} processes, "
                              f"--nproc is {nproc}: run `megaclass reshard {last} --world {nproc}` first")
    launch(nproc, sys.executable, worker_command(argv))
    return LAUNCHED
