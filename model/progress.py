"""The training progress bar: episodes done, smoothed loss and accuracy, elapsed time and time left."""
from __future__ import annotations


class TrainProgress:
    """A rich progress bar with loss, accuracy and ETA (a no-op when disabled); use as a context manager."""

    def __init__(self, enabled: bool, total: int, done: int, name: str):
        self.enabled, self.total, self.done, self.name = enabled, total, done, name
        self.loss = self.acc = None

    def __enter__(self) -> "TrainProgress":
        if self.enabled:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

            self.bar = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                                TextColumn("loss {task.fields[loss]}  acc {task.fields[acc]}"), TimeElapsedColumn(),
                                TextColumn("ETA"), TimeRemainingColumn())
            self.bar.__enter__()
            self.task = self.bar.add_task(f"train {self.name}", total=self.total, completed=self.done, loss="-", acc="-")
        return self

    def update(self, done: int, loss: float, acc: float) -> None:
        """Advance to ``done`` episodes; loss and accuracy are shown as exponential moving averages (0.9)."""
        if not self.enabled:
            return
        self.loss = loss if self.loss is None else 0.9 * self.loss + 0.1 * loss
        self.acc = acc if self.acc is None else 0.9 * self.acc + 0.1 * acc
        self.bar.update(self.task, completed=min(done, self.total), loss=f"{self.loss:.3f}", acc=f"{100 * self.acc:.1f}%")

    def __exit__(self, *exc) -> bool:
        if self.enabled:
            self.bar.__exit__(*exc)
        return False
