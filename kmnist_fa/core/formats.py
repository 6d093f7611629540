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

from .atomic import write_bytes, write_with
from .errors import DataError
from .files import open_input

_GZIP_MAGIC = b"\x1f\x8b"
# idx type code 0x08 = unsigned byte; the last byte of the magic is the number of dims.
_IDX_UBYTE = 0x08


MAX_IDX_BYTES = 1 << 32  # 4 GiB of pixels: 20x K49's training images, far below anything hostile can make us allocate


def _open(path: Path):
    """A binary stream of the file's idx bytes, gunzipped on the fly when it is gzip."""
    f = open_input(path, DataError)
    if f.read(2) == _GZIP_MAGIC:
        f.seek(0)
        return gzip.GzipFile(fileobj=f, mode="rb"), True
    f.seek(0)
    return f, False


def _read_exact(stream, n: int, path: Path, what: str) -> bytes:
    try:
        data = stream.read(n)
    except (EOFError, OSError, zlib.error) as e:
        raise DataError(f"{path}: corrupt or truncated gzip ({e})") from None
    if len(data) != n:
        raise DataError(f"{path}: truncated {what} ({len(data):,} of {n:,} bytes)")
    return data


def read_idx(path: str | Path, ndim: int | None = None) -> np.ndarray:
    """Read an idx file of unsigned bytes; `ndim` (3 images, 1 labels) is enforced if given.

    Streamed: the header is read and its size checked (against the file size, or a
    cap when gzipped) before any data is decompressed or allocated, so a gzip bomb or
    a header claiming 2^90 bytes costs nothing but the error.
    """
    path = Path(path)
    stream, gz = _open(path)
    with stream:
        head = _read_exact(stream, 4, path, "header")
        zero, dtype, dims = struct.unpack(">HBB", head)
        if zero != 0 or dtype != _IDX_UBYTE or dims == 0:
            raise DataError(f"{path}: wrong magic number 0x{head.hex()} (expected 0x0000080{ndim or 'N'}: idx "
                            "unsigned-byte)")
        if ndim is not None and dims != ndim:
            kind = {1: "labels (idx1)", 3: "images (idx3)"}.get(ndim, f"{ndim}-d")
            raise DataError(f"{path}: has {dims} dimensions, expected {kind}")
        shape = struct.unpack(f">{dims}I", _read_exact(stream, 4 * dims, path, "header"))
        size = 1
        for d in shape:  # Python ints: no overflow, whatever the header claims
            size *= d
        if size > MAX_IDX_BYTES:
            raise DataError(f"{path}: header claims shape {shape} ({size:,} bytes), more than kmnist-fa reads "
                            f"({MAX_IDX_BYTES:,})")
        if not gz:
            have = path.stat().st_size - 4 - 4 * dims
            if have != size:
                raise DataError(f"{path}: header says {size:,} bytes of data for shape {shape}, file has {have:,}")
        data = _read_exact(stream, size, path, f"data (header says {size:,} bytes for shape {shape})")
        if gz and _read_exact_or_empty(stream, path):
            raise DataError(f"{path}: more data than the header's {size:,} bytes for shape {shape}")
    # copy: frombuffer views are read-only, and torch warns on (and cannot share) those
    return np.frombuffer(data, dtype=np.uint8).reshape(shape).copy()


def _read_exact_or_empty(stream, path: Path) -> bool:
    """Whether anything follows (one byte is read, never the rest of a bomb)."""
    try:
        return bool(stream.read(1))
    except (EOFError, OSError, zlib.error) as e:
        raise DataError(f"{path}: corrupt or truncated gzip ({e})") from None


def read_npz(path: str | Path) -> np.ndarray:
    """Read the single array `arr_0` of a KMNIST-style npz: no pickles, size checked before decompressing."""
    path = Path(path)
    fmt = np.lib.format
    try:
        with open_input(path, DataError) as fh, zipfile.ZipFile(fh) as z:
            names = z.namelist()
            if "arr_0.npy" not in names:
                shown = ", ".join(n.removesuffix(".npy") for n in names[:5]) or "none"
                raise DataError(f"{path}: npz has no array 'arr_0' (has {shown})")
            with z.open("arr_0.npy") as f:
                version = fmt.read_magic(f)
                read_header = fmt.read_array_header_1_0 if version == (1, 0) else fmt.read_array_header_2_0
                shape, _, dtype = read_header(f)
                size = dtype.itemsize
                for d in shape:
                    size *= d
                if dtype.hasobject or size > MAX_IDX_BYTES:
                    raise DataError(f"{path}: arr_0 is {dtype} of shape {shape}; kmnist-fa reads integer arrays "
                                    f"of at most {MAX_IDX_BYTES:,} bytes")
                f.seek(0)
                arr = fmt.read_array(f, allow_pickle=False)
    except DataError:
        raise
    except (zipfile.BadZipFile, zipfile.LargeZipFile, ValueError, OSError, EOFError, zlib.error, KeyError) as e:
        raise DataError(f"{path}: corrupt npz ({type(e).__name__}: {str(e)[:120]})") from None
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
    def _save(tmp: Path) -> None:
        with open(tmp, "wb") as f:  # a file object stops numpy appending ".npz" to the temp name
            np.savez_compressed(f, arr)

    return write_with(path, _save)
