"""Every notebook in nbs/ runs top to bottom in quick mode (KMNIST_FA_QUICK=1); a failing cell fails the test."""
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NBS = sorted((Path(__file__).resolve().parents[1] / "nbs").glob("[0-9]*.ipynb"))


def test_notebooks_exist_in_reading_order():
    assert [p.stem for p in NBS] == ["00_tour", "01_data", "02_models", "03_training", "04_interpretation",
                                     "05_ensembles"]


@pytest.mark.parametrize("path", NBS, ids=lambda p: p.stem)
def test_notebook_runs(path, kmnist_dir, monkeypatch):
    monkeypatch.setenv("KMNIST_FA_QUICK", "1")
    monkeypatch.setenv("KMNIST_FA_DATA", str(kmnist_dir))
    nb = nbformat.read(path, as_version=4)
    assert nb.cells[0].source.startswith("# ") and "\n> " in nb.cells[0].source  # nbdev front matter
    NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}).execute()
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []) if o.output_type == "error"]
    assert not errors
