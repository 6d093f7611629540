"""The listing commands answer without loading torch or fastai (issue #29: they took 5-17 s to start).

Each command runs in a fresh interpreter, in-process through the typer app, which then
reports what it imported: a top-level torch import anywhere on a listing command's
path fails here, whatever import-linter's static view of the graph says.
"""
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
KMNIST_MINI = ROOT / "tests" / "data" / "kmnist-mini"

# argv[1:] are the command's arguments; the report is stderr's last line, after anything the command printed
HARNESS = """
import json, sys
from kmnist_fa.cli import app
try:
    app(sys.argv[1:], prog_name="kmnist-fa")
    code = 0
except SystemExit as e:
    code = e.code
print(json.dumps({"code": code, "loaded": [m for m in ("torch", "fastai") if m in sys.modules]}), file=sys.stderr)
"""


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory) -> Path:
    """A runs folder holding one copied reference run (its run.json: all that listing and `show` read)."""
    from kmnist_fa.runs.paths import reference_dir

    root = tmp_path_factory.mktemp("models")
    (root / "copied").mkdir()
    shutil.copy(reference_dir() / "lenet5" / "run.json", root / "copied" / "run.json")
    return root


LISTINGS = {  # command -> what its output must contain, so a command that did nothing cannot pass
    "--help": (["--help"], "archs"),
    "archs": (["archs"], "1,922,690"),
    "archs --json": (["archs", "--json"], '"params": 11200298'),
    "recipes": (["recipes"], "report-alexnet7-sgd"),
    "models": (["models", "--models-dir", "{models}"], "copied"),
    "models show": (["models", "--models-dir", "{models}", "show", "copied"], "61,706 parameters"),
    "data info": (["data", "info", "--data", str(KMNIST_MINI)], "train pixels: mean 0.1814, std 0.3391"),
    "data info --json": (["data", "info", "--data", str(KMNIST_MINI), "--json"], '"pixel_mean": 0.1814483293317327'),
}


@pytest.mark.parametrize("command", LISTINGS)
def test_listing_command_loads_neither_torch_nor_fastai(command, models_dir):
    args, want = LISTINGS[command]
    args = [a.format(models=models_dir) for a in args]
    r = subprocess.run([sys.executable, "-c", HARNESS, *args], capture_output=True, text=True, cwd=ROOT, timeout=60)
    report = json.loads(r.stderr.strip().splitlines()[-1])
    assert report["code"] == 0 and want in r.stdout, r.stdout + r.stderr
    assert report["loaded"] == [], f"`kmnist-fa {' '.join(args)}` imported {report['loaded']}"


@pytest.mark.slow
@pytest.mark.e2e
def test_startup_benchmark_smoke():
    """benchmarks/startup.py times every listing command through the installed `kmnist-fa` against the baselines."""
    r = subprocess.run([sys.executable, "benchmarks/startup.py", "--smoke"], cwd=ROOT, capture_output=True, text=True,
                       timeout=240)
    assert r.returncode == 0, r.stderr
    rows = [[c.strip() for c in line.split("|")[1:-1]] for line in r.stdout.splitlines() if line.startswith("| `")]
    assert [c[0] for c in rows] == ["`python -c pass`", '`python -c "import torch"`', "`kmnist-fa --help`",
                                    "`kmnist-fa archs`", "`kmnist-fa recipes`", "`kmnist-fa models`",
                                    "`kmnist-fa models show NAME`", "`kmnist-fa data info`"]
    for cells in rows:
        assert float(cells[1]) > 0
    torch_s = float(rows[1][1])
    assert all(float(c[1]) < torch_s for c in rows[2:])  # no listing command pays for torch
