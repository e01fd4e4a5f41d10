"""``megaclass bench heads --nproc N``: Partial FC sharded over N processes vs one process.

Side by side in one run, each world started by the same elastic launcher as training
(:func:`megaclass.train.launch.launch`): world 1 (one :class:`PartialFCHead` holding all C
centres) and world N (:class:`ShardedPartialFCHead`, C/N centres per process). Every
process times head-only steps (forward with the all-gather and the normaliser all-reduces,
backward with the row-wise SGD-momentum update inside it) on random unit embeddings, its slice of a global
m-per-class batch of B, one torch thread each. Reported per process: median step time,
peak resident memory (``VmHWM`` of ``/proc/self/status``: the process's own high-water
mark, which ``ru_maxrss`` is not for a process forked from a big parent), and head state
bytes. The bytes each process sent on its TCP connections during the timed steps
(``ss -ti``: the kernel's per-socket ``bytes_sent``) are compared with
:func:`megaclass.train.distributed.comm_bytes_per_step`; the loopback interface's counter
(``/proc/net/dev``) is kept too, but it adds every other process's traffic.

Example
-------
>>> report = run_distributed_heads_bench("/tmp/b", classes=100_000, nproc=2, steps=3)  # doctest: +SKIP
"""

from __future__ import annotations

import json
import os
import statistics
import time
from pathlib import Path

import numpy as np

LR = 0.1


def _status(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    return 0


def _lo_bytes() -> int:
    """Bytes sent on the loopback interface so far (every process on this machine)."""
    with open("/proc/net/dev") as f:
        for line in f:
            name, _, rest = line.partition(":")
            if name.strip() == "lo":
                return int(rest.split()[8])
    return 0


def _tcp_bytes_sent(pid: int) -> int | None:
    """Bytes this process has sent on its TCP connections (``ss -ti``: tcp_info.bytes_sent)."""
    import shutil
    import subprocess

    if shutil.which("ss") is None:
        return None
    out = subprocess.run(["ss", "-tinpH"], capture_output=True, text=True).stdout.splitlines()
    total, mine = 0, False
    for line in out:
        if not line[:1].isspace():
            mine = f"pid={pid}," in line
        elif mine and "bytes_sent:" in line:
            total += int(line.split("bytes_sent:")[1].split()[0])
    return total


def _worker(spec: dict) -> dict:
    import torch
    import torch.distributed as dist
    import torch.nn.functional as F

    from ..heads.partial_fc import PartialFCHead
    from ..heads.partial_fc_sharded import ShardedPartialFCHead
    from ..train.distributed import init_from_env, shutdown

    torch.set_num_threads(spec["threads"])
    world = int(os.environ.get("WORLD_SIZE", 1))
    c, d, b, m = spec["classes"], spec["dim"], spec["batch"], 4
    opts = dict(sample_rate=spec["sample_rate"], optimizer="sgd", weight_decay=0.0, dtype=spec["dtype"])
    base = _status("VmRSS")
    torch.manual_seed(0)
    head: PartialFCHead
    if world > 1:
        ctx = init_from_env("gloo", timeout=spec["timeout"])
        rank = ctx.rank
        head = ShardedPartialFCHead(c, d, rank=rank, world=world, group=ctx.head_group, **opts)
    else:
        rank, head = 0, PartialFCHead(c, d, **opts)
    state = sum(t.numel() * t.element_size() for t in head.buffers())
    if spec.get("update", "backward") == "backward":
        head.update_in_backward(LR)  # what the trainer does; "after": backward, then sparse_step
    rng = np.random.default_rng(0)
    times, sent, tcp = [], 0, None
    try:
        for i in range(spec["warmup"] + spec["steps"]):
            if i == spec["warmup"] and world > 1:
                dist.barrier()
                sent, tcp = _lo_bytes(), _tcp_bytes_sent(os.getpid())
            classes = rng.choice(c, size=b // m, replace=False)
            labels = torch.from_numpy(np.repeat(classes, m))[rank * b // world: (rank + 1) * b // world]
            gen = torch.Generator().manual_seed(i * 97 + rank)
            emb = F.normalize(torch.randn(b // world, d, generator=gen), dim=1).requires_grad_()
            t0 = time.perf_counter()
            loss = head(emb, labels)
            loss.backward()
            head.sparse_step(LR)
            if i >= spec["warmup"]:
                times.append(time.perf_counter() - t0)
        if world > 1:
            dist.barrier()
            sent, tcp_after = _lo_bytes() - sent, _tcp_bytes_sent(os.getpid())
            tcp = None if tcp is None or tcp_after is None else tcp_after - tcp
    finally:
        if world > 1:
            shutdown()
    return {"rank": rank, "median_step_s": statistics.median(times), "step_times_s": times,
            "peak_rss_bytes": _status("VmHWM"), "rss_before_bytes": base, "state_bytes": state,
            "rows": head.weight.shape[0], "loss": float(loss.detach()), "lo_bytes_sent": sent,
            "tcp_bytes_sent": tcp}


def run_distributed_heads_bench(out, *, classes: int = 2_000_000, dim: int = 256, batch: int = 256,
                                nproc: int = 2, steps: int = 10, warmup: int = 2, sample_rate: float = 0.1,
                                dtype: str = "float32", threads: int = 1, timeout: float = 600,
                                update: str = "backward", log=print) -> dict:
    """Measure world 1 and world ``nproc`` one after the other; write JSON + PNG to ``out``.

    ``update``: ``"backward"`` (the row update inside backward, as the trainer does) or
    ``"after"`` (backward holds the rows' whole gradient, then ``sparse_step``)."""
    from ..errors import ConfigError
    from ..train.distributed import comm_bytes_per_step
    from ..train.launch import launch

    if nproc < 2:
        raise ConfigError(f"--nproc must be >= 2 to compare with one process, got {nproc}")
    if update not in ("backward", "after"):
        raise ConfigError(f"update must be 'backward' or 'after', got {update!r}")
    if batch % (4 * nproc):
        raise ConfigError(f"--batch ({batch}) must be a multiple of 4 x --nproc ({4 * nproc})")
    spec = dict(classes=classes, dim=dim, batch=batch, steps=steps, warmup=warmup, sample_rate=sample_rate,
                dtype=dtype, threads=threads, timeout=timeout, update=update)
    worlds = {}
    for world in (1, nproc):
        if log:
            log(f"world {world}: {classes:,} classes x {dim}, B={batch}, {steps} steps ...")
        os.environ["OMP_NUM_THREADS"] = str(threads)
        results = launch(world, _worker, [spec])
        worlds[world] = [results[r] for r in sorted(results)]
    one, many = worlds[1][0], worlds[nproc]
    formula = comm_bytes_per_step(batch, dim, nproc)
    lo = many[0]["lo_bytes_sent"] / nproc / steps
    tcp = [r["tcp_bytes_sent"] / steps for r in many if r.get("tcp_bytes_sent") is not None]
    measured = max(tcp) if tcp else lo
    worst = {k: max(r[k] for r in many) / one[k] for k in ("median_step_s", "peak_rss_bytes", "state_bytes")}
    report = {"config": {**spec, "nproc": nproc, "cpu_count": os.cpu_count()}, "world_1": worlds[1],
              f"world_{nproc}": many,
              "ratios": {"step_time_vs_world_1": worst["median_step_s"],
                         "peak_rss_per_process_vs_world_1": worst["peak_rss_bytes"],
                         "state_per_process_vs_world_1": worst["state_bytes"]},
              "comm_bytes_per_rank_step": {"formula": formula, "measured": measured,
                                           "measured_tcp_per_rank": tcp, "loopback_all_processes": lo,
                                           "measured_over_formula": measured / formula["total"]},
              "peak_rss_over_state": {f"world_{w}": [r["peak_rss_bytes"] / r["state_bytes"] for r in rs]
                                      for w, rs in worlds.items()}}
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "heads_distributed.json").write_text(json.dumps(report, indent=1))
    _plot(report, worlds, out / "heads_distributed.png")
    return report


def _plot(report: dict, worlds: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [f"world {w}, rank {r['rank']}" for w, rs in worlds.items() for r in rs]
    rows = [r for rs in worlds.values() for r in rs]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
    axes[0].bar(names, [r["median_step_s"] * 1000 for r in rows], color="tab:blue")
    axes[0].set_ylabel("median step (ms)")
    axes[1].bar(names, [r["peak_rss_bytes"] / 2**30 for r in rows], color="tab:orange", label="peak RSS")
    axes[1].bar(names, [r["state_bytes"] / 2**30 for r in rows], color="tab:gray", label="centres + state")
    axes[1].set_ylabel("GiB per process")
    axes[1].legend()
    c = report["config"]
    fig.suptitle(f"Partial FC, {c['classes']:,} classes x {c['dim']}, B={c['batch']}, "
                 f"sample rate {c['sample_rate']}")
    for ax in axes:
        ax.tick_params(axis="x", labelsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def heads_distributed_cli(out, sizes, *, as_json: bool, **kw) -> None:
    """``bench heads --nproc N``: run at each size (default 2M classes) and print per-process rows."""
    import typer
    from rich.table import Table

    from ..cli_common import console
    from .heads import format_bytes

    reports = []
    for c in sizes or [2_000_000]:
        log = None if as_json else (lambda msg: console.print(f"[dim]{msg}[/dim]"))
        path = Path(out) / (f"{c}" if sizes and len(sizes) > 1 else "")
        reports.append(run_distributed_heads_bench(path, classes=c, log=log, **kw))
    if as_json:
        # one report as an object, several as a list (cli_common._emit takes only a dict)
        typer.echo(json.dumps(reports if len(reports) > 1 else reports[0], indent=2, default=float))
        return
    for rep in reports:
        cfg = rep["config"]
        table = Table(title=f"Partial FC, {cfg['classes']:,} classes x {cfg['dim']}, B={cfg['batch']} "
                            f"(global), {cfg['steps']} steps (median), {cfg['threads']} thread(s)/process")
        for col in ("world", "rank", "rows", "step ms", "peak RSS", "centres + state", "RSS/state"):
            table.add_column(col, justify="right")
        for key in ("world_1", f"world_{cfg['nproc']}"):
            for r in rep[key]:
                table.add_row(key.split("_")[1], str(r["rank"]), f"{r['rows']:,}",
                              f"{r['median_step_s'] * 1000:,.0f}",
                              format_bytes(r["peak_rss_bytes"]), format_bytes(r["state_bytes"]),
                              f"{r['peak_rss_bytes'] / r['state_bytes']:.2f}")
        console.print(table)
        ratio, comm = rep["ratios"], rep["comm_bytes_per_rank_step"]
        console.print(f"world {cfg['nproc']} vs 1, per process: step {ratio['step_time_vs_world_1']:.2f}x, "
                      f"peak RSS {ratio['peak_rss_per_process_vs_world_1']:.2f}x, "
                      f"state {ratio['state_per_process_vs_world_1']:.2f}x")
        console.print(f"bytes sent per rank per step: formula {comm['formula']['total']:,}, measured "
                      f"{comm['measured']:,.0f} ({comm['measured_over_formula']:.2f}x)")
    console.print(f"wrote {Path(out)}/heads_distributed.json and .png")
