"""The notebooks in nbs/ pass nbdev's own runner in quick mode (KMNIST_FA_QUICK=1): every cell runs,
the assertion cells after each example hold, and `#| eval: false` cells are skipped as nbdev does."""
import os
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

NBS_DIR = Path(__file__).resolve().parents[1] / "nbs"
NBS = sorted(NBS_DIR.glob("[0-9]*.ipynb"))


def test_notebooks_are_nbdev_tutorials_in_reading_order():
    assert [p.stem for p in NBS] == ["00_tour", "01_data", "02_models", "03_training", "04_interpretation",
                                     "05_ensembles"]
    for p in NBS:
        nb = nbformat.read(p, as_version=4)
        assert nb.cells[0].source.startswith("# ") and "\n> " in nb.cells[0].source, p.name  # nbdev front matter
        code = [c.source for c in nb.cells if c.cell_type == "code"]
        assert any(s.startswith("assert ") for s in code), p.name  # examples are checked, as in fastai's notebooks
        if p.stem != "00_tour":  # each teaching notebook documents the API it teaches
            assert any("show_doc(" in s for s in code), p.name
        assert all(c.get("outputs") for c in nb.cells if c.cell_type == "code" and "show_doc(" in c.source), p.name


@pytest.mark.slow
@pytest.mark.e2e
def test_notebooks_pass_nbdev_test(kmnist_full_dir):
    env = {**os.environ, "KMNIST_FA_QUICK": "1", "KMNIST_FA_DATA": str(kmnist_full_dir)}
    runner = Path(sys.executable).parent / "nbdev-test"
    r = subprocess.run([str(runner), "--n-workers", "2", "--timing"], cwd=NBS_DIR, env=env, capture_output=True,
                       text=True, timeout=900)
    assert r.returncode == 0 and "Success." in r.stdout, r.stdout[-3000:] + r.stderr[-3000:]
