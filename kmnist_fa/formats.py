"""Readers and writers for the two on-disk formats of the MNIST family.

* idx (`*-idx3-ubyte` images, `*-idx1-ubyte` labels), gzipped or not; gzip is
  detected from the file's magic bytes, not its name, because mirrors rename files.
* NumPy `.npz` with one array `arr_0`, as the KMNIST authors publish
  (`kmnist-train-imgs.npz`, `k49-test-labels.npz`, ...).

Every problem becomes a `DataError` that names the file, so a user with 60,000
images in a folder learns which one of four files is bad and why.
"""
from __future__ import annotations

import gzip
import io
import struct
import zipfile
import zlib
from pathlib import Path

import numpy as np

from .errors import DataError

_GZIP_MAGIC = b"\x1f\x8b"
# idx type code 0x08 = unsigned byte; the last byte of the magic is the number of dims.
_IDX_UBYTE = 0x08


def _read_raw(path: Path) -> bytes:
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror})") from None
    if raw[:2] == _GZIP_MAGIC:
        try:
            return gzip.decompress(raw)
        except (EOFError, OSError, zlib.error) as e:
            raise DataError(f"{path}: corrupt or truncated gzip ({e})") from None
    return raw


def read_idx(path: str | Path, ndim: int | None = None) -> np.ndarray:
    """Read an idx file of unsigned bytes; `ndim` (3 images, 1 labels) is enforced if given."""
    path = Path(path)
    raw = _read_raw(path)
    if len(raw) < 4:
        raise DataError(f"{path}: too short to be an idx file ({len(raw)} bytes)")
    zero, dtype, dims = struct.unpack(">HBB", raw[:4])
    if zero != 0 or dtype != _IDX_UBYTE or dims == 0:
        raise DataError(f"{path}: wrong magic number 0x{raw[:4].hex()} (expected 0x0000080{ndim or 'N'}: idx unsigned-byte)")
    if ndim is not None and dims != ndim:
        kind = {1: "labels (idx1)", 3: "images (idx3)"}.get(ndim, f"{ndim}-d")
        raise DataError(f"{path}: has {dims} dimensions, expected {kind}")
    header = 4 + 4 * dims
    if len(raw) < header:
        raise DataError(f"{path}: truncated header")
    shape = struct.unpack(f">{dims}I", raw[4:header])
    size = int(np.prod(shape))
    if len(raw) - header != size:
        raise DataError(f"{path}: header says {size:,} bytes of data for shape {shape}, file has {len(raw) - header:,}")
    # copy: frombuffer views are read-only, and torch warns on (and cannot share) those
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape).copy()


def read_npz(path: str | Path) -> np.ndarray:
    """Read the single array `arr_0` of a KMNIST-style npz (no pickles allowed)."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: file not found")
    try:
        with np.load(path, allow_pickle=False) as z:
            if "arr_0" not in z.files:
                raise DataError(f"{path}: npz has no array 'arr_0' (has {', '.join(z.files) or 'none'})")
            arr = z["arr_0"]
    except DataError:
        raise
    except (zipfile.BadZipFile, ValueError, OSError, EOFError, zlib.error) as e:
        raise DataError(f"{path}: corrupt npz ({e})") from None
    if arr.dtype != np.uint8:
        if not np.issubdtype(arr.dtype, np.integer) or arr.min(initial=0) < 0 or arr.max(initial=0) > 255:
            raise DataError(f"{path}: expected uint8 values, found {arr.dtype}")
        arr = arr.astype(np.uint8)
    return arr


def read_array(path: str | Path, ndim: int) -> np.ndarray:
    """Read images (`ndim=3`) or labels (`ndim=1`) from either format, by file name."""
    path = Path(path)
    arr = read_npz(path) if path.name.endswith(".npz") else read_idx(path, ndim)
    if arr.ndim != ndim:
        raise DataError(f"{path}: array has shape {arr.shape}, expected {ndim} dimensions")
    return arr


def encode_idx(arr: np.ndarray) -> bytes:
    """idx bytes for a uint8 array (used to write synthetic datasets and exports)."""
    arr = np.ascontiguousarray(arr, dtype=np.uint8)
    return struct.pack(">HBB", 0, _IDX_UBYTE, arr.ndim) + struct.pack(f">{arr.ndim}I", *arr.shape) + arr.tobytes()


def write_idx(path: str | Path, arr: np.ndarray, compress: bool | None = None) -> Path:
    """Write `arr` as idx, gzipped when `compress` (default: when the name ends in .gz)."""
    from .atomic import write_bytes

    path = Path(path)
    data = encode_idx(arr)
    if compress if compress is not None else path.suffix == ".gz":
        buf = io.BytesIO()
        # mtime=0 keeps the bytes (and so the MD5) reproducible.
        with gzip.GzipFile(fileobj=buf, mode="wb", mtime=0) as g:
            g.write(data)
        data = buf.getvalue()
    return write_bytes(path, data)


def write_npz(path: str | Path, arr: np.ndarray) -> Path:
    from .atomic import write_with

    def _save(tmp: Path) -> None:
        with open(tmp, "wb") as f:  # a file object stops numpy appending ".npz" to the temp name
            np.savez_compressed(f, arr)

    return write_with(path, _save)
