"""What `--out` and the readers do with paths that are not regular files: devices and FIFOs are written through,
never renamed over; `-` is stdout for text; sockets, folders and binary output to stdout are refused; special
files are never opened for reading (a FIFO would block forever). Whatever could hang runs under a timeout, so a
regression fails here instead of stalling CI."""
from __future__ import annotations

import os
import socket
import stat
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from PIL import Image
from typer.testing import CliRunner

from kmnist_fa.cli import app
from kmnist_fa.core.atomic import write_bytes, write_text
from kmnist_fa.core.errors import DataError, OptionError, OutputError, RunError

ROOT = Path(__file__).resolve().parents[1]
runner = CliRunner()
BIG = 2**64  # torch's and numpy's seeds overflow here


def run(*args):
    return runner.invoke(app, [str(a) for a in args])


def one_line_error(r, *words):
    assert r.exit_code == 2, r.output
    assert r.stderr.startswith("error: ") and r.stderr.strip().count("\n") == 0, r.stderr
    for w in words:
        assert w in r.stderr, r.stderr


def within(seconds: float, fn):
    """`fn()`'s result or exception, failing the test if it has not returned in time (a blocked open of a FIFO
    stays behind in a daemon thread)."""
    box = {}

    def call():
        try:
            box["value"] = fn()
        except BaseException as e:  # noqa: BLE001  (handed to the test)
            box["error"] = e

    t = threading.Thread(target=call, daemon=True)
    t.start()
    t.join(seconds)
    assert not t.is_alive(), f"still running after {seconds}s: it blocked"
    if "error" in box:
        raise box["error"]
    return box["value"]


def cli(*args, timeout: float = 120, **kw) -> subprocess.CompletedProcess:
    """The real command in a child process (this checkout's code), killed if it blocks."""
    return subprocess.run([sys.executable, "-m", "kmnist_fa", *map(str, args)], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout, **kw)


@pytest.fixture
def png(tmp_path) -> Path:
    p = tmp_path / "a.png"
    Image.new("L", (28, 28), 0).save(p)
    return p


@pytest.fixture
def fifo(tmp_path) -> Path:
    p = tmp_path / "pipe"
    os.mkfifo(p)
    return p


def read_fifo(path: Path) -> tuple[threading.Thread, list[bytes]]:
    got: list[bytes] = []
    t = threading.Thread(target=lambda: got.append(Path(path).read_bytes()), daemon=True)
    t.start()
    return t, got


# ------------------------------------------------------------------ writing


def test_devices_and_fifos_are_written_through_not_replaced(fifo):
    write_text("/dev/null", "Id,Category\n")
    assert stat.S_ISCHR(os.stat("/dev/null").st_mode)  # as root a rename would have made it a regular file
    with pytest.raises(OutputError, match="a FIFO that nobody reads"):
        within(10, lambda: write_text(fifo, "x"))
    t, got = read_fifo(fifo)
    text = "Id,Category\n" + "".join(f"{i},{i % 10}\n" for i in range(50_000))  # more than a pipe's buffer
    within(30, lambda: write_text(fifo, text))
    t.join(10)
    assert got == [text.encode()] and stat.S_ISFIFO(os.stat(fifo).st_mode)
    t, got = read_fifo(fifo)
    within(30, lambda: write_bytes(fifo, b"\x89PNG"))  # named on purpose, a binary file goes through too
    t.join(10)
    assert got == [b"\x89PNG"]


def test_a_symlink_to_a_file_stays_a_link(tmp_path):
    (tmp_path / "real.csv").write_text("old")
    (tmp_path / "link.csv").symlink_to("real.csv")
    write_text(tmp_path / "link.csv", "new\n")
    assert (tmp_path / "link.csv").is_symlink() and (tmp_path / "real.csv").read_text() == "new\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link.csv", "real.csv"]  # no temp file left


def test_sockets_folders_and_binary_stdout_are_refused(tmp_path):
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(tmp_path / "s.csv"))
    try:
        with pytest.raises(OutputError, match="s.csv: cannot write \\(a socket"):
            write_text(tmp_path / "s.csv", "x")
    finally:
        sock.close()
    with pytest.raises(OutputError, match="a folder of that name is in the way"):
        write_text(tmp_path, "x")
    with pytest.raises(OutputError, match="^-: cannot write \\(a binary file"):
        write_bytes("-", b"x")


def test_predict_out_targets(lenet_run, png, tmp_path):
    m = ["-m", lenet_run.path]
    r = run("predict", png, *m, "--out", "-")
    assert r.exit_code == 0, r.output
    lines = r.stdout.splitlines()  # the CSV, nothing else
    assert len(lines) == 2 and lines[0] == "Id,Category" and lines[1].startswith("a.png,"), r.stdout
    assert r.stderr.startswith("wrote -")
    r = run("predict", png, *m, "--probs", "-", "--out", tmp_path / "s.csv")
    assert r.exit_code == 0 and r.stdout.startswith("Id,Category,o,ki,") and r.stdout.count("\n") == 2, r.output
    assert (tmp_path / "s.csv").read_text().startswith("Id,Category\na.png,")
    r = run("predict", png, *m, "--out", "/dev/null")
    assert r.exit_code == 0 and stat.S_ISCHR(os.stat("/dev/null").st_mode), r.output
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(tmp_path / "sock"))
    try:
        one_line_error(run("predict", png, *m, "--out", tmp_path / "sock"), "a socket")
    finally:
        sock.close()
    one_line_error(run("predict", png, *m, "--out", tmp_path), "a folder of that name is in the way")
    one_line_error(run("predict", png, *m, "--out", "-", "--probs", "-"), "--out - and --probs -")
    one_line_error(run("predict", png, *m, "--out", "-", "--json"), "--out - and --json")


def test_predict_to_dev_stdout_through_a_pipe(lenet_run, png):
    before = os.lstat("/dev/stdout").st_mode
    r = subprocess.run(f"{sys.executable} -m kmnist_fa predict {png} -m {lenet_run.path} --out /dev/stdout | head -1",
                       shell=True, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout == "Id,Category\n", r.stderr
    assert os.lstat("/dev/stdout").st_mode == before  # the system's link, not renamed over by a regular file


def test_dev_stdout_appended_by_the_shell_keeps_what_the_file_held(tmp_path):
    """`>> log`: /dev/stdout is a link to the log file; renaming over it (or reopening it) would lose the log."""
    log = tmp_path / "log.txt"
    log.write_text("earlier line\n")
    code = "from kmnist_fa.core.atomic import write_text; write_text('/dev/stdout', 'Id,Category\\n')"
    with open(log, "a") as f:
        subprocess.run([sys.executable, "-c", code], stdout=f, check=True, cwd=ROOT, timeout=60)
    assert log.read_text() == "earlier line\nId,Category\n"
    with pytest.raises(OutputError, match="an open file descriptor's name; use - for standard output"):
        write_text("/dev/fd/7", "x")


def test_ensemble_out_to_stdout(lenet_run, kmnist_dir):
    r = run("ensemble", lenet_run.path, "--data", kmnist_dir, "--out", "-")
    assert r.exit_code == 0, r.output
    lines = r.stdout.splitlines()
    assert lines[0] == "Id,Category" and len(lines) == 301 and lines[1].startswith("0,")  # tables went to stderr
    assert "pairwise disagreement" in r.stderr and not Path("-_disagreement.png").exists()  # no heatmap beside `-`


def test_binary_outputs_to_stdout_are_one_line(kmnist_dir):
    one_line_error(run("data", "show", "--data", kmnist_dir, "--n", "4", "--out", "-"), "-: cannot write",
                   "binary")


def test_interpret_output_folder_errors(lenet_run, kmnist_dir):
    one_line_error(run("interpret", lenet_run.path, "--data", kmnist_dir, "--out", "/proc/r"), "/proc/r: cannot write")
    one_line_error(run("interpret", lenet_run.path, "--data", kmnist_dir, "--out", "-"), "a folder of files")


# ------------------------------------------------------------------ seeds


def test_seeds_beyond_numpys_limit_are_one_line(lenet_run, png):
    one_line_error(run("predict", png, "-m", lenet_run.path, "--seed", BIG), "--seed must be in [0, 4294967295]")
    one_line_error(run("ensemble", lenet_run.path, "--seed", -1), "--seed must be in [0, 4294967295]")
    one_line_error(run("train", "lenet5", "--seed", BIG), "--seed must be in [0, 4294967295]")
    from kmnist_fa.runtime import main

    assert main([str(png), "-m", "x.onnx", "--seed", str(BIG)]) == 2
    assert run("predict", png, "-m", lenet_run.path, "--seed", 2**32 - 1).exit_code == 0


# ------------------------------------------------------------------ reading


def test_fifo_run_json_is_skipped_by_models(lenet_run, tmp_path):
    import shutil

    shutil.copytree(lenet_run.path, tmp_path / "good")
    (tmp_path / "ghost").mkdir()
    os.mkfifo(tmp_path / "ghost" / "run.json")
    r = cli("models", "--models-dir", tmp_path, "--json", timeout=60)
    assert r.returncode == 0, r.stderr
    assert "good" in r.stdout and "ghost" not in r.stdout
    r = cli("models", "--models-dir", tmp_path, "show", "ghost", timeout=60)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "a FIFO, not a regular file" in r.stderr, r.stderr


def test_fifo_input_to_predict_is_refused(lenet_run, fifo):
    r = cli("predict", fifo, "-m", lenet_run.path)
    assert r.returncode == 2 and r.stdout == "", r.stdout
    assert r.stderr.count("\n") == 1 and f"{fifo}: cannot read (a FIFO, not a regular file)" in r.stderr, r.stderr


def test_readers_refuse_special_files_without_blocking(fifo, tmp_path):
    from kmnist_fa.config.recipes import load_recipe
    from kmnist_fa.core.formats import read_array
    from kmnist_fa.data.datasets import md5sum
    from kmnist_fa.data.images import read_image
    from kmnist_fa.infer.runtime import OnnxClassifier
    from kmnist_fa.runs.record import RunRecord

    for name in ("x-idx3-ubyte", "x.npz", "x.toml", "run.json", "x.onnx", "x.png"):
        os.mkfifo(tmp_path / name)
    for fn, error in ((lambda: read_array(tmp_path / "x-idx3-ubyte", 3), DataError),
                      (lambda: read_array(tmp_path / "x.npz", 3), DataError),
                      (lambda: md5sum(fifo), DataError),
                      (lambda: read_image(tmp_path / "x.png"), DataError),
                      (lambda: OnnxClassifier(tmp_path / "x.onnx"), DataError),
                      (lambda: load_recipe(tmp_path / "x.toml"), OptionError),
                      (lambda: RunRecord.read(tmp_path), RunError),
                      (lambda: read_image("/dev/zero"), DataError)):
        with pytest.raises(error, match="a (FIFO|character device), not a regular file"):
            within(10, fn)
