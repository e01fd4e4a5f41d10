"""CLI of the training area beyond ``train`` itself: ``megaclass reshard``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ..cli_common import JsonOpt, _emit, console


def register(app: typer.Typer) -> None:
    """Add ``reshard`` to the ``megaclass`` app."""

    @app.command("reshard")
    def reshard_cmd(checkpoint: Annotated[Path, typer.Argument(help="A checkpoint step directory, or a --checkpoint-dir (its latest).")],
                    world: Annotated[int, typer.Option(help="The world size (processes) to rewrite it for; 1 gives a plain head/.")],
                    out: Annotated[Path | None, typer.Option(help="Write here instead of rewriting in place.")] = None,
                    as_json: JsonOpt = False) -> None:
        """Rewrite a training checkpoint's head shards for another number of processes."""
        from .sharded import checkpoint_world, reshard

        done = reshard(checkpoint, world, out=out)
        info = {"checkpoint": str(done), "world_size": checkpoint_world(done)}
        if as_json:
            _emit(info, True)
        else:
            console.print(f"{done}: head sharded for {info['world_size']} process(es); resume with "
                          f"--nproc {world} --resume" if world > 1 else
                          f"{done}: one head (head/); resume without --nproc, or export its centres "
                          f"with `megaclass export-head {done / 'head'}`")
