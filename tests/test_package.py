"""Installs like a package: a wheel carries the reference runs, and predicts from anywhere."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
@pytest.mark.e2e
def test_wheel_installs_and_predicts_outside_the_checkout(tmp_path, kmnist):
    wheels = tmp_path / "wheels"
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                        str(wheels), str(ROOT)], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    (wheel,) = wheels.glob("kmnist_fa-*.whl")
    target = tmp_path / "site"
    r = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target),
                        str(wheel)], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    assert (target / "kmnist_fa" / "reference" / "alexnet7" / "model.pth").exists()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    Image.fromarray(255 - kmnist.train_x[0]).save(elsewhere / "char.png")  # dark ink on white, like a scan
    code = ("import kmnist_fa, sys; from pathlib import Path; assert Path(kmnist_fa.__file__).is_relative_to("
            f"Path({str(target)!r})), kmnist_fa.__file__; sys.argv = ['kmnist-fa', 'predict', 'char.png', '--out', "
            "'s.csv', '--tta-n', '1']; import runpy; runpy.run_module('kmnist_fa', run_name='__main__')")
    r = subprocess.run([sys.executable, "-c", code], cwd=elsewhere, capture_output=True, text=True, timeout=600,
                       env={**os.environ, "PYTHONPATH": str(target)})
    assert r.returncode == 0, r.stderr[-2000:]
    rows = (elsewhere / "s.csv").read_text().splitlines()
    assert rows[0] == "Id,Category" and rows[1] == f"char.png,{int(kmnist.train_y[0])}"


def test_reference_runs_by_name_and_python_m(tmp_path):
    r = subprocess.run([sys.executable, "-m", "kmnist_fa", "models", "--models-dir", str(tmp_path), "show",
                        "reference/alexnet7"], capture_output=True, text=True, cwd=tmp_path, timeout=120,
                       env={**os.environ, "COLUMNS": "200"})
    assert r.returncode == 0 and "alexnet7 (1,922,690 parameters)" in r.stdout, r.stderr
    r = subprocess.run([sys.executable, "-m", "kmnist_fa", "models", "show", "reference/../../etc"],
                       capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert r.returncode == 2 and "no such run" in r.stderr
