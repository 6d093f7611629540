"""SIGTERM as an interruption: what `kill`, `timeout`, systemd, Slurm and Kubernetes send stops a run the way
Ctrl-C does (its writes committed, a line saying how to continue), instead of ending it mid-write."""
from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where Ctrl-C raises KeyboardInterrupt, so both unwind through the same code.

    Unlike Ctrl-C, which the terminal sends to every process of the job, SIGTERM reaches
    one process: a parent with worker processes passes it on (`pipelines.search`).
    """


def _raise(signum, frame):
    raise Terminated


@contextlib.contextmanager
def sigterm_interrupts() -> Iterator[None]:
    """Within the block, SIGTERM raises `Terminated`; the previous handler comes back after.

    Only the main thread can set handlers; elsewhere SIGTERM keeps its default.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = signal.signal(signal.SIGTERM, _raise)
    try:
        yield
    finally:
        # None: the old handler was not installed from Python, so it cannot be put back; the default is closest
        signal.signal(signal.SIGTERM, signal.SIG_DFL if old is None else old)
