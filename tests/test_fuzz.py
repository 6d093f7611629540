"""Fuzzing the readers of untrusted files: every input gives a result or one DataError line, in bounded memory."""
import gzip
import io
import os
import subprocess
import sys
import textwrap
import zlib
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from kmnist_fa.core.errors import DataError
from kmnist_fa.core.formats import encode_idx, read_array
from kmnist_fa.data.datasets import read_classmap
from kmnist_fa.data.images import decode_image

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
ROOT = Path(__file__).resolve().parents[1]


def _one_line(e: DataError, name: str) -> None:
    msg = str(e)
    assert "\n" not in msg and name in msg, msg


def _mutate(data: bytes, draw) -> bytes:
    """Truncate, overwrite bytes, or append: the ways a file gets damaged or forged."""
    how = draw(st.sampled_from(["truncate", "flip", "append", "header"]))
    if how == "truncate":
        return data[:draw(st.integers(0, max(0, len(data) - 1)))]
    if how == "append":
        return data + draw(st.binary(min_size=1, max_size=64))
    at = draw(st.integers(0, 15 if how == "header" else max(0, len(data) - 1)))
    new = draw(st.binary(min_size=1, max_size=8))
    return data[:at] + new + data[at + len(new):]


@FUZZ
@given(data=st.data())
def test_idx_and_npz_readers(tmp_path, data):
    x = np.random.default_rng(0).integers(0, 255, (3, 28, 28), dtype=np.uint8)
    kind = data.draw(st.sampled_from(["idx", "idx.gz", "npz", "random"]))
    if kind == "random":
        raw, name = data.draw(st.binary(max_size=200)), "random-idx3-ubyte"
    elif kind == "npz":
        buf = io.BytesIO()
        np.savez_compressed(buf, x)
        raw, name = _mutate(buf.getvalue(), data.draw), "x-imgs.npz"
    else:
        plain = _mutate(encode_idx(x), data.draw)  # header fields and data damaged before compressing
        raw = gzip.compress(plain, mtime=0) if kind == "idx.gz" else plain
        raw, name = (_mutate(raw, data.draw) if data.draw(st.booleans()) else raw), f"x-idx3-ubyte.{kind}"
    f = tmp_path / name
    f.write_bytes(raw)
    try:
        arr = read_array(f, 3)
    except DataError as e:
        _one_line(e, str(f))
    else:
        assert arr.dtype == np.uint8 and arr.ndim == 3 and arr.size <= len(raw) * 1100


@FUZZ
@given(text=st.text(max_size=300))
def test_classmap_reader(tmp_path, text):
    f = tmp_path / "x_classmap.csv"
    f.write_text("index,codepoint,char\n" + text if text[:1] != "!" else text, encoding="utf-8")
    try:
        names = read_classmap(f)
    except DataError as e:
        _one_line(e, str(f))
    else:
        assert names and len(set(names)) == len(names) and all(0 < len(n) <= 100 for n in names)


@FUZZ
@given(data=st.data())
def test_image_decoding(data):
    w, h = data.draw(st.integers(1, 60)), data.draw(st.integers(1, 60))
    buf = io.BytesIO()
    Image.new(data.draw(st.sampled_from(["L", "RGB", "RGBA", "P", "1"])), (w, h), 128).save(
        buf, format=data.draw(st.sampled_from(["PNG", "GIF", "BMP"])))
    raw = _mutate(buf.getvalue(), data.draw) if data.draw(st.booleans()) else buf.getvalue()
    try:
        img = decode_image(raw, "upload.img")
    except DataError as e:
        _one_line(e, "upload.img")
    else:
        assert img.shape == (28, 28) and img.dtype == np.uint8


def _bomb(path: Path, claimed_images: int, real_bytes: int) -> None:
    """A gzip whose header claims `claimed_images` 28x28 images but which inflates to `real_bytes`."""
    z = zlib.compressobj(9, zlib.DEFLATED, 31)
    with open(path, "wb") as f:
        f.write(z.compress(b"\0\0\x08\x03" + np.array([claimed_images, 28, 28], ">u4").tobytes()))
        block = bytes(1 << 20)
        for _ in range(real_bytes >> 20):
            f.write(z.compress(block))
        f.write(z.flush())


@pytest.mark.slow
def test_readers_stay_within_a_memory_limit(tmp_path):
    """Under a 1 GiB address-space limit: a 2 GiB gzip bomb, a header claiming 2^96 bytes, and a
    40,000,000x1 image all end in a DataError (or a framed image), never in MemoryError."""
    _bomb(tmp_path / "bomb-idx3-ubyte.gz", 10, 2 << 30)
    (tmp_path / "huge-idx3-ubyte").write_bytes(b"\0\0\x08\x03" + b"\xff" * 12 + b"\0" * 100)
    Image.new("L", (40_000_000, 1), 255).save(tmp_path / "strip.png")
    assert (tmp_path / "bomb-idx3-ubyte.gz").stat().st_size < 5 << 20
    code = textwrap.dedent(f"""
        import resource
        from pathlib import Path
        from kmnist_fa.core.errors import DataError
        from kmnist_fa.core.formats import read_array
        from kmnist_fa.data.images import read_image
        resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))
        d = Path({str(tmp_path)!r})
        for name in ("bomb-idx3-ubyte.gz", "huge-idx3-ubyte"):
            try:
                read_array(d / name, 3)
                raise SystemExit(name + ": read")
            except DataError as e:
                print(e)
        print(read_image(d / "strip.png").shape)
    """)
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=ROOT, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    lines = r.stdout.strip().splitlines()
    assert "more data than the header's 7,840 bytes" in lines[0]
    assert "more than kmnist-fa reads" in lines[1] and lines[2] == "(28, 28)"


def test_cli_gives_one_line_for_damaged_dataset_files(tmp_path):
    from typer.testing import CliRunner

    from kmnist_fa.cli import app

    from .conftest import write_synthetic

    root = write_synthetic(tmp_path / "toy")
    f = root / "train-images-idx3-ubyte.gz"
    f.write_bytes(f.read_bytes()[:100])
    r = CliRunner().invoke(app, ["data", "info", "--data", str(root)])
    assert r.exit_code == 2 and r.output.strip().count("\n") == 0 and str(f) in r.output.replace("\n", "")


class _Evil:
    """Unpickling this would create a marker file: proof that code ran."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_pickles_never_run(tmp_path):
    import torch

    from kmnist_fa.core.errors import RunError
    from kmnist_fa.core.formats import read_npz
    from kmnist_fa.runs.weights import load_state

    marker = tmp_path / "ran"
    np.savez(tmp_path / "evil.npz", np.array([_Evil(marker)], dtype=object))
    with pytest.raises(DataError, match="evil.npz"):
        read_npz(tmp_path / "evil.npz")
    torch.save({"w": _Evil(marker)}, tmp_path / "model.pth")
    with pytest.raises(RunError, match="not a weights-only state file"):
        load_state(tmp_path / "model.pth")
    assert not marker.exists()


def test_output_paths_and_input_names(lenet_run, tmp_path):
    import shutil

    from typer.testing import CliRunner

    from kmnist_fa.cli import app

    run = CliRunner().invoke
    png = tmp_path / "a.png"
    Image.new("L", (28, 28), 0).save(png)
    m = ["-m", str(lenet_run.path)]
    for out, why in ((tmp_path, "a folder of that name is in the way"), (png / "x.csv", "a file is in the way"),
                     (Path("/proc/no/x.csv"), "cannot write")):
        r = run(app, ["predict", str(png), *m, "--out", str(out)])
        assert r.exit_code == 2 and why in r.output and r.output.strip().count("\n") == 0, r.output
    (tmp_path / "d1").mkdir()
    (tmp_path / "d2").mkdir()
    shutil.copy(png, os.fsencode(tmp_path / "d1") + b"/\xff.png")  # a file name that is not UTF-8
    shutil.copy(png, tmp_path / "d1" / "b.png")
    r = run(app, ["predict", str(tmp_path / "d1"), *m, "--out", str(tmp_path / "s.csv")])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "s.csv").read_text(encoding="utf-8").splitlines()[1:][1].startswith("\\xff.png,")
    shutil.copy(png, tmp_path / "d2" / "b.png")
    r = run(app, ["predict", str(tmp_path / "d1"), str(tmp_path / "d2"), *m])
    assert r.exit_code == 2 and "b.png is named twice" in r.output
