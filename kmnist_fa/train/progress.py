"""Terminal progress for fastai fits: a rich bar per epoch and one table row per epoch.

fastai's own ProgressCallback draws with fastprogress, which in a plain terminal
prints a new line per update; the CLI swaps in this callback instead. Notebooks keep
fastai's HTML progress.
"""
from __future__ import annotations

from fastai.callback.core import Callback
from fastcore.basics import noop
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)


def _fmt(v) -> str:
    return f"{v:.4f}" if isinstance(v, float) else str(v)


class RichProgress(Callback):
    order = 60  # where fastai's ProgressCallback sits

    def __init__(self, console: Console | None = None):
        self.console = console or Console(stderr=True)
        self.progress = None

    def before_fit(self):
        self.old_logger = self.learn.logger
        self.show_rows = self.learn.logger is not noop  # lr_find fits run with logging off
        if self.show_rows:
            self.learn.logger = self._row
            self._row(self.recorder.metric_names)
        self.progress = Progress(TextColumn("{task.description}", markup=False), BarColumn(), MofNCompleteColumn(),
                                 TextColumn("{task.fields[loss]}"), TimeElapsedColumn(), TimeRemainingColumn(),
                                 console=self.console, transient=True)
        self.progress.start()
        self.task = None

    def _run_epochs(self) -> tuple[int, int]:
        """(epochs of earlier phases, epochs in the whole run): a fine-tuning run fits twice,
        and its rows and bars should count on from phase one as run.json does."""
        return getattr(self.learn, "epoch_offset", 0), getattr(self.learn, "run_epochs", None) or self.n_epoch

    def _launch(self, what: str):
        offset, total = self._run_epochs()
        desc = f"epoch {offset + self.epoch + 1}/{total} {what}" if self.show_rows else what
        self.task = self.progress.add_task(desc, total=len(self.dl), loss="")

    def before_train(self):
        self._launch("train" if self.show_rows else "lr_find")

    def before_validate(self):
        self._launch("valid")

    def after_batch(self):
        if self.task is not None:
            loss = f"loss {self.smooth_loss.item():.4f}" if self.training else ""
            self.progress.update(self.task, advance=1, loss=loss)

    def _end_task(self):
        if self.task is not None:
            self.progress.remove_task(self.task)
            self.task = None

    after_train = after_validate = after_cancel_train = after_cancel_validate = _end_task

    def after_fit(self):
        self._end_task()
        self.progress.stop()
        self.learn.logger = self.old_logger

    def _row(self, log):
        if log and isinstance(log[0], int):  # a result row, not the header
            epoch = self._run_epochs()[0] + log[0]
            if epoch < getattr(self.learn, "resume_epoch", 0):  # fastai logs a blank row for each epoch a resume skips
                return
            log = [epoch + 1, *log[1:]]  # counted from 1, as run.json, plots and summaries count
        self.console.print("  ".join(f"{_fmt(v):>11}" for v in log), highlight=False)


class ImagesSeen(Callback):
    """Reports the images in each inference batch (every TTA pass counts), for a progress bar."""

    order = 100

    def __init__(self, report):
        self.report = report

    def after_batch(self):
        if not self.training:
            self.report(len(self.learn.xb[0]))
