"""What is at a user's path, decided before anything opens it.

Opening a FIFO for reading blocks until a writer comes (forever, for a `run.json` or an
image that is one), a device can be endless (/dev/zero) or act when opened (a tape
rewinds), and a socket cannot be opened at all. kmnist-fa reads regular files only: the
path is `stat`ed first, then opened without blocking and checked again, so a FIFO swapped
in between cannot hang the read either. Anything else is one line naming what it is.
"""
from __future__ import annotations

import contextlib
import errno
import os
import stat
from collections.abc import Iterator
from typing import IO

from .errors import KmnistError

_KINDS = ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"),
          (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"))


def kind(mode: int) -> str:
    """A `st_mode` in words, for error lines."""
    return next((words for test, words in _KINDS if test(mode)), "a regular file" if stat.S_ISREG(mode) else
                "not a file")


class NotRegularFile(OSError):
    """An OSError, so that a reader's own `except OSError` already reports it in one line."""


def _require_regular(mode: int) -> None:
    if not stat.S_ISREG(mode):
        raise NotRegularFile(errno.EINVAL, f"{kind(mode)}, not a regular file")


NONBLOCK = getattr(os, "O_NONBLOCK", 0)  # POSIX; Windows has neither the flag nor FIFOs to open by path


def open_regular(path: str | os.PathLike, mode: str = "rb", **kwargs) -> IO:
    """`open(path, mode, **kwargs)` for reading, refusing (NotRegularFile) anything but a regular file."""
    _require_regular(os.stat(path).st_mode)
    fd = os.open(path, os.O_RDONLY | NONBLOCK | getattr(os, "O_BINARY", 0))  # Windows: no CRLF or ^Z translation
    try:
        _require_regular(os.fstat(fd).st_mode)
        if NONBLOCK:
            os.set_blocking(fd, True)
        return open(fd, mode, **kwargs)
    except BaseException:
        os.close(fd)
        raise


@contextlib.contextmanager
def _reported(path: str | os.PathLike, error: type[KmnistError]) -> Iterator[None]:
    try:
        yield
    except FileNotFoundError:
        raise error(f"{path}: file not found") from None
    except OSError as e:
        raise error(f"{path}: cannot read ({e.strerror or type(e).__name__})") from None


def open_input(path: str | os.PathLike, error: type[KmnistError], mode: str = "rb", **kwargs) -> IO:
    """`open_regular`, with a missing, unreadable or special file raised as one line of `error`."""
    with _reported(path, error):
        return open_regular(path, mode, **kwargs)


def check_input(path: str | os.PathLike, error: type[KmnistError]) -> None:
    """`open_input`'s checks without opening, for a library that opens the path itself (onnxruntime)."""
    with _reported(path, error):
        _require_regular(os.stat(path).st_mode)
