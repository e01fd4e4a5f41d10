"""A progress bar for long command-line work: done/total, items per second, time left.

Shown on stderr (so ``--json`` output on stdout stays clean) and only when enabled; the
CLI disables it with ``--quiet`` and in ``--json`` mode.

Example
-------
>>> with ItemProgress(3, "embedding", unit="images", enabled=False) as bar:
...     for _ in range(3):
...         bar.advance(1)
>>> bar.done
3
"""

from __future__ import annotations

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)


class ItemProgress:
    """Context manager counting items towards ``total`` with their rate (no-op when disabled)."""

    def __init__(self, total: int, description: str, *, unit: str = "items", enabled: bool = True) -> None:
        self.total, self.description, self.unit, self.enabled = total, description, unit, enabled
        self.done = 0
        self._progress: Progress | None = None

    def __enter__(self) -> ItemProgress:
        if self.enabled and self.total > 0:
            self._progress = Progress(
                TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                TextColumn("{task.fields[rate]}"),
                TimeElapsedColumn(), TimeRemainingColumn(), console=Console(stderr=True), transient=False)
            self._progress.start()
            self._task = self._progress.add_task(self.description, total=self.total, rate="")
        return self

    def advance(self, n: int = 1) -> None:
        """Count ``n`` more items done."""
        self.done += n
        if self._progress is not None:
            task = self._progress.tasks[0]
            speed = task.speed or 0.0
            self._progress.update(self._task, advance=n, rate=f"{speed:,.0f} {self.unit}/s" if speed else "")

    def __exit__(self, *exc) -> None:
        if self._progress is not None:
            self._progress.stop()
