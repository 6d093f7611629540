import gzip

import numpy as np
import pytest

from kmnist_fa.core.errors import DataError
from kmnist_fa.core.formats import encode_idx, read_array, read_idx, read_npz, write_idx, write_npz


@pytest.mark.parametrize("name", ["imgs-idx3-ubyte", "imgs-idx3-ubyte.gz"])
def test_idx_roundtrip_plain_and_gzip(tmp_path, name):
    x = np.random.default_rng(0).integers(0, 256, (7, 28, 28), dtype=np.uint8)
    write_idx(tmp_path / name, x)
    assert (tmp_path / name).read_bytes()[:2] == (b"\x1f\x8b" if name.endswith(".gz") else b"\x00\x00")
    np.testing.assert_array_equal(read_idx(tmp_path / name, 3), x)


def test_gzip_detected_by_content_not_name(tmp_path):
    y = np.arange(10, dtype=np.uint8)
    (tmp_path / "labels-idx1-ubyte").write_bytes(gzip.compress(encode_idx(y)))  # gzipped, no .gz
    np.testing.assert_array_equal(read_idx(tmp_path / "labels-idx1-ubyte", 1), y)


def test_npz_roundtrip(tmp_path):
    x = np.random.default_rng(0).integers(0, 256, (5, 28, 28), dtype=np.uint8)
    write_npz(tmp_path / "k-train-imgs.npz", x)
    np.testing.assert_array_equal(read_npz(tmp_path / "k-train-imgs.npz"), x)
    np.testing.assert_array_equal(read_array(tmp_path / "k-train-imgs.npz", 3), x)


def test_truncated_gzip(tmp_path):
    data = gzip.compress(encode_idx(np.zeros((50, 28, 28), np.uint8) + 7))
    (tmp_path / "x.gz").write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match=r"x\.gz: corrupt or truncated gzip"):
        read_idx(tmp_path / "x.gz")


def test_wrong_magic(tmp_path):
    (tmp_path / "bad").write_bytes(b"\x00\x00\x0d\x03" + b"\x00" * 20)
    with pytest.raises(DataError, match="bad: wrong magic number 0x00000d03"):
        read_idx(tmp_path / "bad")


def test_labels_file_given_as_images(tmp_path):
    write_idx(tmp_path / "y", np.arange(5, dtype=np.uint8))
    with pytest.raises(DataError, match="has 1 dimensions, expected images"):
        read_idx(tmp_path / "y", 3)


def test_truncated_payload(tmp_path):
    raw = encode_idx(np.zeros((4, 28, 28), np.uint8))
    (tmp_path / "short").write_bytes(raw[:-10])
    with pytest.raises(DataError, match="header says 3,136 bytes"):
        read_idx(tmp_path / "short")


def test_corrupt_npz_and_missing_arr0(tmp_path):
    (tmp_path / "c.npz").write_bytes(b"PK\x03\x04garbage")
    with pytest.raises(DataError, match="c.npz: corrupt npz"):
        read_npz(tmp_path / "c.npz")
    np.savez(tmp_path / "d.npz", images=np.zeros(3, np.uint8))
    with pytest.raises(DataError, match="no array 'arr_0'"):
        read_npz(tmp_path / "d.npz")


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match="nope.gz: file not found"):
        read_idx(tmp_path / "nope.gz")
