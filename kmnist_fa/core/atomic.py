"""Crash-safe writes: a reader sees the old file or the new one, never half of one.

Only a regular file, or a path with nothing there yet, is replaced by renaming a temp file
over it. Whatever else a user names is written through or refused, never renamed over (a
rename would turn /dev/null into a regular file, as root, and send nothing down a pipe):
a character device or a FIFO (/dev/stdout, a terminal, a named pipe) gets the bytes, `-`
is standard output for text, and a folder, socket or block device is refused in one line.
A symlink to a regular file is followed, so the link stays a link. /dev/stdout (and its
/dev/fd, /proc aliases) means the stream itself, like `-`: it is a link to the file the shell
redirected the output to, which a rename would replace and a reopen would overwrite.
"""
from __future__ import annotations

import contextlib
import csv
import errno
import io
import json
import os
import re
import stat
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from .errors import OptionError, OutputError
from .files import NONBLOCK, kind

STDOUT = "-"
# names of this process's own standard output: writing to one means the stream, wherever the shell sent it (a
# file opened with `>>` among them, which renaming over would empty, and opening by name would overwrite)
STDOUT_NAMES = {STDOUT, "/dev/stdout", "/dev/fd/1", "/proc/self/fd/1"}
_FD_LINK = re.compile(r"^/(dev/(stderr|fd/\d+)|proc/(self|\d+)/fd/\d+)$")


def is_stdout(path: str | os.PathLike | None) -> bool:
    """Whether `path` names standard output (`-`, /dev/stdout); a file called `-` is written as `./-`."""
    return path is not None and str(path) in STDOUT_NAMES


def stdout_taken(files: dict[str, object], as_json: bool = False) -> bool:
    """Whether one of a command's text `files` (option -> path) is `-`: then stdout holds that file's bytes
    alone, and the command's other messages go to stderr. Two of them, or one and `--json`, is an OptionError."""
    piped = [f"{opt} -" for opt, path in files.items() if is_stdout(path)]
    if len(piped) + as_json > 1:
        raise OptionError(f"{' and '.join(piped + ['--json'] * as_json)}: only one of them can write to stdout")
    return bool(piped)


def _passes_through(mode: int) -> bool:
    return stat.S_ISCHR(mode) or stat.S_ISFIFO(mode)


def _target(path: Path, text: bool) -> Path | None:
    """The regular file to replace at `path` (its symlinks followed), or None to write through or to stdout."""
    if is_stdout(path):
        if not text:
            raise OutputError(f"{path}: cannot write (a binary file goes to a file, not to stdout, which takes text "
                              "only)")
        return None
    if _FD_LINK.match(str(path)):  # another open stream of some process: its name is not where its bytes go
        raise OutputError(f"{path}: cannot write (an open file descriptor's name; use - for standard output)")
    try:
        mode = os.stat(path).st_mode
    except OSError:  # nothing there (or not reachable): the rename's own steps say why if it fails
        return path
    if stat.S_ISREG(mode):
        return Path(os.path.realpath(path))
    if _passes_through(mode):
        return None
    if stat.S_ISDIR(mode):
        raise OutputError(f"{path}: cannot write (a folder of that name is in the way)")
    raise OutputError(f"{path}: cannot write ({kind(mode)}; kmnist-fa writes files, character devices and FIFOs)")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, text: bool = False) -> Iterator[Path]:
    """Yield a temp path; publish it at `path` only if the block succeeds.

    Replacing a regular file, the temp file lives in the same folder so the final
    `os.replace` is atomic on POSIX, and it is fsync'ed first so a power cut cannot leave
    an empty file behind a completed rename. Writing through (a device, a FIFO, `-` when
    `text`), it lives in the system's temp folder and its bytes are copied once complete.
    """
    path = Path(path)
    tmp = None
    try:
        target = _target(path, text)
        if target is None:
            fd, name = tempfile.mkstemp(prefix="kmnist-fa-", suffix=".tmp")
        else:
            make_folder(target.parent)
            fd, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
        os.close(fd)
        tmp = Path(name)
        yield tmp
        if target is None:
            _write_through(path, tmp.read_bytes())
            return
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600 (and some writers recreate the file): usual mode
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except OSError as e:
        raise OutputError(f"{path}: cannot write ({e.strerror or type(e).__name__})") from None
    finally:
        if tmp is not None and tmp.exists():
            tmp.unlink()


def make_folder(path: str | os.PathLike) -> Path:
    """`mkdir -p path`, a failure as one OutputError line."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise OutputError(f"{path}: cannot write the folder (a file is in the way)") from None
    except OSError as e:
        raise OutputError(f"{path}: cannot write the folder ({e.strerror or type(e).__name__})") from None
    return path


def _write_through(path: Path, data: bytes) -> None:
    """`data` into stdout, a device or a FIFO, which stay what they are.

    Opened without blocking: a FIFO with no reader is one line now instead of a wait
    forever, and the type is checked again on the open file, so a regular file swapped in
    since the stat is refused rather than overwritten from its start.
    """
    if is_stdout(path):
        sys.stdout.flush()  # what was printed before goes before the file
        try:
            sys.stdout.buffer.write(data)
            sys.stdout.buffer.flush()
        except BrokenPipeError:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit's flush
            raise OutputError(f"{path}: cannot write (the reader closed stdout before the end)") from None
        return
    try:
        # never our controlling terminal; O_BINARY: Windows would otherwise turn LF into CRLF
        fd = os.open(path, os.O_WRONLY | NONBLOCK | getattr(os, "O_NOCTTY", 0) | getattr(os, "O_BINARY", 0))
    except OSError as e:
        if e.errno == errno.ENXIO and stat.S_ISFIFO(os.stat(path).st_mode):
            raise OutputError(f"{path}: cannot write (a FIFO that nobody reads; start its reader first)") from None
        raise
    with os.fdopen(fd, "wb") as f:
        mode = os.fstat(fd).st_mode
        if not _passes_through(mode):
            raise OutputError(f"{path}: cannot write (became {kind(mode)} while being written)")
        if NONBLOCK:
            os.set_blocking(fd, True)
        f.write(data)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_with(path: str | os.PathLike, writer: Callable[[Path], Any], text: bool = False) -> Path:
    """Run `writer(tmp_path)` and atomically publish the result at `path` (`-`, stdout, only if `text`)."""
    with atomic_path(path, text) as tmp:
        writer(tmp)
    return Path(path)


def write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    return write_with(path, lambda p: p.write_bytes(data))


def write_text(path: str | os.PathLike, text: str) -> Path:
    # newline="\n": submission CSVs must be LF on every platform.
    return write_with(path, lambda p: p.write_text(text, encoding="utf-8", newline="\n"), text=True)


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    return write_text(path, json.dumps(obj, indent=2, ensure_ascii=False, default=str) + "\n")


def csv_text(rows: list[dict], fieldnames: list[str] | None = None) -> str:
    """Dict rows as LF-terminated CSV text (columns: `fieldnames`, default the first row's keys)."""
    buf = io.StringIO()
    if rows or fieldnames:
        w = csv.DictWriter(buf, fieldnames=fieldnames or list(rows[0]), extrasaction="ignore", lineterminator="\n")
        w.writeheader()
        w.writerows(rows)
    return buf.getvalue()


def write_csv(path: str | os.PathLike, rows: list[dict], fieldnames: list[str] | None = None) -> Path:
    return write_text(path, csv_text(rows, fieldnames))
