"""Runs as a collection: listing a models folder, and holding one run folder for writing."""
from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from ..core.errors import KmnistError, RunError
from .paths import RUN_FILE, models_dir
from .record import RunRecord


@dataclass
class Unreadable:
    """A folder with a run.json that does not load; listings show it and go on."""

    name: str
    path: Path
    reason: str


def list_runs(root: str | Path | None = None) -> list[RunRecord | Unreadable]:
    """Every run under the models dir, sorted by folder; one bad run.json never hides the others, and one that
    is not a regular file (a FIFO would block the listing's read forever) is no run at all."""
    base = models_dir(root)
    out: list[RunRecord | Unreadable] = []
    for p in sorted(q for q in base.glob(f"**/{RUN_FILE}") if q.is_file()):
        try:
            out.append(RunRecord.read(p.parent))
        except KmnistError as e:
            out.append(Unreadable(p.parent.name, p.parent, str(e)))
    return out


@contextlib.contextmanager
def run_lock(path: Path) -> Iterator[None]:
    """Hold a run folder for writing: a second trainer of the same run is refused, not interleaved.

    An advisory `flock` on the folder itself, so no lock file is left behind and a
    killed holder releases it with its process. Where `fcntl` does not exist
    (Windows) runs are not locked.
    """
    try:
        import fcntl
    except ImportError:  # pragma: no cover
        yield
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        for wait in (0.01, 0.03, 0.1, None):  # a listing's probe (`writer_alive`) holds it for an instant
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if wait is None:
                    raise RunError(f"{path}: another process is training this run; wait for it or stop it "
                                   "first") from None
                time.sleep(wait)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def writer_alive(path: Path) -> bool | None:
    """Whether a process holds `run_lock` on this folder: a run.json saying `running` is only the last thing its
    writer recorded, and a killed writer cannot update it, but its lock goes with its process.

    None where it cannot tell (no `fcntl`, or the folder cannot be opened). The probe takes and drops a
    shared lock for an instant; `run_lock` retries for a moment before it calls a run busy. flock is
    per machine: on a shared filesystem whose locks are node-local, a run another node trains looks
    interrupted here (docs/reliability.md).
    """
    try:
        import fcntl
    except ImportError:  # pragma: no cover
        return None
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # releases the probe's lock


def remove_leftovers(path: Path) -> list[str]:
    """Delete temp files of writes that a kill interrupted (call only while holding `run_lock`)."""
    gone = []
    for p in path.glob(".*.tmp"):
        p.unlink(missing_ok=True)
        gone.append(p.name)
    return gone


def run_status(name: str, root: str | Path | None = None) -> str:
    """A run's state in one word for listings: not started, training, interrupted, complete or unreadable."""
    path = models_dir(root) / name
    if not (path / RUN_FILE).is_file():
        return "training" if path.is_dir() and writer_alive(path) else "not started"
    try:
        rec = RunRecord.read(path)
    except KmnistError:
        return "unreadable"
    if rec.complete:
        return "complete"
    return "training" if writer_alive(path) is not False else "interrupted"
