"""A rich progress bar for training: step, loss and throughput."""

from __future__ import annotations

from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)


class TrainProgress:
    """Context manager showing ``step/total``, loss and images/s (no-op when disabled)."""

    def __init__(self, total: int, *, enabled: bool = True, start: int = 0,
                 description: str = "training") -> None:
        self.enabled = enabled
        self.total = total
        self.start = start
        self.description = description
        self._progress: Progress | None = None

    def __enter__(self) -> TrainProgress:
        if self.enabled:
            self._progress = Progress(
                TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                TextColumn("loss {task.fields[loss]}"), TextColumn("{task.fields[speed]} img/s"),
                TimeElapsedColumn(), TimeRemainingColumn(), transient=False)
            self._progress.start()
            self._task = self._progress.add_task(self.description, total=self.total,
                                                 completed=self.start, loss="-", speed="-")
        return self

    def update(self, step: int, loss: float, speed: float) -> None:
        if self._progress is not None and (step % 5 == 0 or step == self.total):
            self._progress.update(self._task, completed=step, loss=f"{loss:.3f}", speed=f"{speed:,.0f}")

    def __exit__(self, *exc) -> None:
        if self._progress is not None:
            self._progress.stop()
