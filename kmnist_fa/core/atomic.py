"""Crash-safe writes: a reader sees the old file or the new one, never half of one."""
from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from .errors import OutputError


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temp path beside `path`; rename it over `path` only if the block succeeds.

    The temp file lives in the same folder so the final `os.replace` is atomic on
    POSIX, and it is fsync'ed first so a power cut cannot leave an empty file behind
    a completed rename.
    """
    path = Path(path)
    tmp = None
    try:
        if path.is_dir():
            raise IsADirectoryError(21, "a folder of that name is in the way")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except (FileExistsError, NotADirectoryError):
            raise NotADirectoryError(20, "a file is in the way of its folder") from None
        fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
        tmp = Path(name)
        yield tmp
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600 (and some writers recreate the file): usual mode
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        raise OutputError(f"{path}: cannot write ({e.strerror or type(e).__name__})") from None
    finally:
        if tmp is not None and tmp.exists():
            tmp.unlink()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_with(path: str | os.PathLike, writer: Callable[[Path], Any]) -> Path:
    """Run `writer(tmp_path)` and atomically publish the result at `path`."""
    with atomic_path(path) as tmp:
        writer(tmp)
    return Path(path)


def write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    return write_with(path, lambda p: p.write_bytes(data))


def write_text(path: str | os.PathLike, text: str) -> Path:
    # newline="\n": submission CSVs must be LF on every platform.
    return write_with(path, lambda p: p.write_text(text, encoding="utf-8", newline="\n"))


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
