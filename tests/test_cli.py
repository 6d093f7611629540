import json
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from kmnist_fa import __version__
from kmnist_fa.cli import app

ROOT = Path(__file__).resolve().parents[1]
runner = CliRunner()


def run(*args, **kw):
    return runner.invoke(app, [str(a) for a in args], **kw)


def test_help_lists_every_command():
    import re

    r = run("--help")
    assert r.exit_code == 0
    panel = r.output.split("Commands")[1]
    listed = re.findall(r"^│ (\S+) ", panel, re.M)  # first cell of each row, not words of the descriptions
    assert listed == ["archs", "train", "recipes", "lr-find", "sweep", "tune", "predict", "ensemble", "serve",
                      "export", "interpret", "evaluate", "data", "models"]
    assert run("--version").output.strip() == f"kmnist-fa {__version__}"


@pytest.mark.e2e
def test_shim_behaves_like_entry_point():
    r = subprocess.run([sys.executable, "cli.py", "--version"], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.strip() == f"kmnist-fa {__version__}"
    r = subprocess.run([sys.executable, "cli.py", "train", "nope"], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 2 and r.stderr.strip().count("\n") == 0 and "unknown architecture 'nope'" in r.stderr


def test_archs_table():
    r = run("archs")
    assert r.exit_code == 0
    for s in ("lenet5", "61,706", "alexnet5", "989,586", "alexnet7", "1,922,690", "xresnet18"):
        assert s in r.output


def test_data_info_real(kmnist_dir):
    r = run("data", "info", "--data", kmnist_dir)
    assert r.exit_code == 0, r.output
    assert "1,200" in r.output and "300" in r.output and "unlabelled" in r.output and "お o" in r.output


def test_data_show_writes_png(kmnist_dir, tmp_path):
    from PIL import Image

    r = run("data", "show", "--data", kmnist_dir, "--aug", "heavy", "--n", "16", "--out", tmp_path / "b.png")
    assert r.exit_code == 0, r.output
    w, h = Image.open(tmp_path / "b.png").size
    assert w > 400 and h > 150


@pytest.mark.parametrize("args,msg", [
    (["train", "lenet5", "--epochs", "0"], "--epochs must be at least 1"),
    (["train", "lenet5", "--aug", "extreme"], "--aug must be one of"),
    (["train", "lenet5", "--n-folds", "5"], "--fold must be in 0..4"),
    (["train", "lenet5", "--name", "../escape"], "not a valid run name"),
    (["train"], "ARCH is required"),
    (["data", "info", "--data", "/nonexistent/dir"], "is not a folder"),
    (["data", "info", "nope"], "unknown dataset 'nope'"),
    (["models", "show", "ghost"], "no such run"),
])
def test_bad_input_one_line_exit_2(args, msg, tmp_path, kmnist_dir):
    if args[0] == "train" and "--data" not in args:
        args = args + ["--data", str(kmnist_dir), "--models-dir", str(tmp_path)]
    r = run(*args)
    assert r.exit_code == 2, r.output
    assert msg in r.output
    assert r.output.strip().count("\n") == 0  # one line, no traceback


def test_train_models_show_resume_cli(kmnist_dir, tmp_path):
    r = run("train", "lenet5", "--epochs", "2", "--lr", "3e-3", "--data", kmnist_dir, "--models-dir", tmp_path,
            "--name", "cli", "--quiet")
    assert r.exit_code == 0, r.output
    assert "best valid accuracy" in r.output
    r = run("models", "--models-dir", tmp_path, "--json")
    rows = json.loads(r.output)
    assert rows[0]["name"] == "cli" and rows[0]["status"] == "complete"
    r = run("models", "--models-dir", tmp_path, "show", "cli")
    assert r.exit_code == 0 and "61,706 parameters" in r.output and "holdout" in r.output
    r = run("train", "--resume", "cli", "--models-dir", tmp_path)
    assert r.exit_code == 2 and "already complete" in r.output
    (tmp_path / "cli" / "model.pth").write_bytes(b"garbage")
    r = run("models", "--models-dir", tmp_path, "show", "cli")
    assert r.exit_code == 0  # show reads run.json only


def test_lr_find_cli(kmnist_dir, tmp_path):
    from PIL import Image

    r = run("lr-find", "lenet5", "--data", kmnist_dir, "--out", tmp_path / "lr.png")
    assert r.exit_code == 0, r.output
    for k in ("valley", "slide", "minimum", "steep"):
        assert k in r.output
    assert Image.open(tmp_path / "lr.png").size[0] >= 300


@pytest.mark.slow
@pytest.mark.e2e
def test_benchmark_smoke(kmnist_dir):
    """All tables of bench.py still run: training, patches, data pipeline per preset, inference, export; RSS in each."""
    r = subprocess.run([sys.executable, "benchmarks/bench.py", "--smoke", "--datasets", "kmnist-10k",
                        "--kmnist", str(kmnist_dir)], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    rows = [line.split("|")[1:-1] for line in r.stdout.splitlines() if line.startswith("| ") and "img/s" not in line]
    patches = [c for c in rows if c[2].strip() in ("dispatch", "untyped")]  # each patch against stock fastai
    assert [c[2].strip() for c in patches] == ["dispatch", "untyped"] and all(float(c[4]) > 0 for c in patches)
    rows = [c for c in rows if c not in patches]
    labels = [c[0].strip() for c in rows]
    assert labels == ["kmnist-10k / lenet5", "kmnist-10k / none", "kmnist-10k / light", "kmnist-10k / heavy",
                      "alexnet5", "alexnet5 TTA n=4", "default reference (predict with no --model)",
                      "alexnet5 / batch 256", "alexnet5 / batch 1", "alexnet5 / batch 256, against kmnist-fa predict"]
    assert float(rows[-2][-2]) < float(rows[-2][-1])  # the torch-free runtime's process is the smaller one
    assert "Installed size: the runtime's stack" in r.stdout
    for cells in rows:  # a throughput and an RSS in every row, a ratio wherever there is a hand-written twin
        ips, rss = float(cells[1].split("(")[0].replace(",", "")), float(cells[-2])
        assert ips > 0 and 20 < rss < 20000
        assert (cells[2].strip() == "-") == (cells[3].strip() == "-")
    toolkit_s, plain_s = map(float, rows[0][4].split("/"))  # training: seconds per 5,400-image epoch
    assert 0 < toolkit_s < 60 and 0 < plain_s < 60


def test_listings_have_json(kmnist_dir):
    archs = json.loads(run("archs", "--json").output)
    assert {"name": "lenet5", "params": 61_706}.items() <= archs[0].items()
    recipes = {r["name"]: r for r in json.loads(run("recipes", "--json").output)}
    assert recipes["report-alexnet7-sgd"]["mom"] == 0.8
    info = json.loads(run("data", "info", "--data", kmnist_dir, "--json").output)
    assert info["train_images"] == 1200 and info["classes"][0] == {"class": 0, "name": "o", "char": "お",
                                                                   "train": 120, "test": None}


@pytest.mark.slow
def test_piped_tables_keep_whole_names_and_numbers(tmp_path):
    """`COLUMNS=40 kmnist-fa models | grep NAME` finds the run: piped tables take their natural width."""
    import os
    import shutil

    from kmnist_fa.runs.paths import reference_dir

    name = "a-long-run-name-lenet5-20261130-073000"
    shutil.copytree(reference_dir() / "lenet5", tmp_path / name)
    env = {**os.environ, "COLUMNS": "40"}
    for args, want in ((["models", "--models-dir", str(tmp_path)], name), (["archs"], "1,922,690")):
        r = subprocess.run([sys.executable, "-m", "kmnist_fa", *args], capture_output=True, text=True, env=env)
        assert r.returncode == 0 and any(want in line for line in r.stdout.splitlines()), r.stdout
