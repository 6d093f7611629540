"""How long the installed `kmnist-fa` takes to answer its listing commands (issue #29).

Wall time of each command as a fresh process, stdout to /dev/null, against two
baselines timed in the same run: the bare interpreter (`python -c pass`) and the
import the listing commands must not pay (`python -c "import torch"`). Repetitions
interleave the commands, so a burst of load on this shared machine spreads over all
rows instead of one; reported as median (min-max) seconds. The target is under 1 s
for every listing command. `models` lists a throwaway runs folder holding a copy of
a shipped reference run's run.json, which `models show` shows; `data info` reads the
committed kmnist-mini sample.

    python benchmarks/startup.py            # median of 5
    python benchmarks/startup.py --smoke    # one repetition: what the test suite runs
"""
from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from kmnist_fa.runs.paths import reference_dir

ROOT = Path(__file__).resolve().parents[1]
KMNIST_MINI = ROOT / "tests" / "data" / "kmnist-mini"
TARGET_S = 1.0
SHOWN = "copied-lenet5"


def kmnist_fa_command() -> str:
    """The console script installed beside this interpreter, else the one on PATH."""
    beside = Path(sys.executable).with_name("kmnist-fa")
    found = str(beside) if beside.exists() else shutil.which("kmnist-fa")
    if found is None:
        raise SystemExit("kmnist-fa is not installed (pip install -e .)")
    return found


def commands(models: Path) -> dict[str, list[str]]:
    """Row label -> argv; the first two are the baselines."""
    cli = kmnist_fa_command()
    return {
        "python -c pass": [sys.executable, "-c", "pass"],
        'python -c "import torch"': [sys.executable, "-c", "import torch"],
        "kmnist-fa --help": [cli, "--help"],
        "kmnist-fa archs": [cli, "archs"],
        "kmnist-fa recipes": [cli, "recipes"],
        "kmnist-fa models": [cli, "models", "--models-dir", str(models)],
        "kmnist-fa models show NAME": [cli, "models", "--models-dir", str(models), "show", SHOWN],
        "kmnist-fa data info": [cli, "data", "info", "--data", str(KMNIST_MINI)],
    }


def wall_s(argv: list[str]) -> float:
    t0 = time.perf_counter()
    r = subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    elapsed = time.perf_counter() - t0
    if r.returncode:
        raise SystemExit(f"{' '.join(argv)} exited with {r.returncode}:\n{r.stderr}")
    return elapsed


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5, help="runs of each command; the median is reported")
    ap.add_argument("--smoke", action="store_true", help="one repetition: checks that every row runs")
    args = ap.parse_args(argv)
    repeats = 1 if args.smoke else args.repeats
    with tempfile.TemporaryDirectory() as tmp:
        models = Path(tmp)
        (models / SHOWN).mkdir()
        shutil.copy(reference_dir() / "lenet5" / "run.json", models / SHOWN / "run.json")
        cmds = commands(models)
        times: dict[str, list[float]] = {label: [] for label in cmds}
        for _ in range(repeats):
            for label, cmd in cmds.items():
                times[label].append(wall_s(cmd))
    median = {label: statistics.median(t) for label, t in times.items()}
    bare, torch_s = median["python -c pass"], median['python -c "import torch"']
    print(f"Python {sys.version.split()[0]}, each command {repeats}x, interleaved: median (min-max) wall "
          f"seconds; target < {TARGET_S:g} s for each kmnist-fa command\n\n"
          "| command | median s | min-max s | / python -c pass | / import torch | under target |\n"
          "|---|---:|---:|---:|---:|---|")
    for label, t in times.items():
        target = "-" if not label.startswith("kmnist-fa") else "yes" if median[label] < TARGET_S else "NO"
        print(f"| `{label}` | {median[label]:.2f} | {min(t):.2f}-{max(t):.2f} | {median[label] / bare:.1f} | "
              f"{median[label] / torch_s:.2f} | {target} |")


if __name__ == "__main__":
    main()
