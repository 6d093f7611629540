"""Progress bars of the commands that predict (predict, ensemble, interpret, evaluate).

Apart from `common` so that commands which only list things never load fastai; like every
command's API calls, fastai's side is imported inside the function, for start-up speed.
"""
from __future__ import annotations

import contextlib

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from .common import err


@contextlib.contextmanager
def inference_progress(members, quiet: bool, total: int | None = None):
    """A bar over the images the runs predict (each TTA pass counts), on a terminal and unless quiet."""
    if quiet or not err.is_terminal:
        yield
        return
    from ..train.progress import ImagesSeen

    with Progress(TextColumn("predicting images"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=err, transient=True) as prog:
        task = prog.add_task("predict", total=total)
        cbs = [ImagesSeen(lambda n: prog.advance(task, n)) for _ in members]
        for m, cb in zip(members, cbs):
            m.learn.add_cb(cb)
        try:
            yield
        finally:
            for m, cb in zip(members, cbs):
                m.learn.remove_cb(cb)
