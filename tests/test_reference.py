"""The shipped reference runs: they load, match their parameter counts, and reproduce their recorded predictions."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from kmnist_fa.config.options import TtaSettings
from kmnist_fa.core.formats import read_idx
from kmnist_fa.infer.predict import load_run, predict_probs
from kmnist_fa.models.registry import create_model, n_params
from kmnist_fa.runs.paths import reference_default, reference_dir
from kmnist_fa.runs.record import FORMAT_VERSION, RunRecord

# the check batch: the first 64 labelled images of KMNIST-10k (tests/data/README.md)
CHECK_IMAGES = read_idx(Path(__file__).parent / "data" / "reference-check" / "check-images-idx3-ubyte.gz")

SHIPPED = sorted(p for p in reference_dir().iterdir() if (p / "run.json").exists())


def test_reference_runs_are_shipped():
    assert {p.name for p in SHIPPED} >= {"lenet5", "alexnet5", "alexnet7"}
    ref = reference_default()
    assert all(p.exists() for p in ref["paths"]) and ref["tta"].on in (True, False) and ref["tta"].n >= 1
    assert ref["tta"] == TtaSettings(on=True, n=4, beta=0.75, method="mean")  # reference/default.json, every key read


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_shipped_run_loads_and_reproduces_its_check_batch(path):
    assert (path / "model.pth").stat().st_size <= 10 * 2**20
    sd = torch.load(path / "model.pth", weights_only=True)  # no pickled code
    # the report's three were shipped in the first format and are migrated on reading; later ones in the current one
    first = path.name in ("lenet5", "alexnet5", "alexnet7")
    assert json.loads((path / "run.json").read_text())["format_version"] == (1 if first else FORMAT_VERSION)
    rec = RunRecord.read(path)
    m = rec.config.model
    model = create_model(m.arch, len(rec.classes), m.bn, m.dropout)
    assert n_params(model) == rec.n_params == sum(v.numel() for k, v in sd.items() if "running" not in k
                                                  and "num_batches" not in k)
    run = load_run(path, cpu=True)
    check = rec.extra["check"]  # written by tools/export_reference.py, kept through migration
    n = len(check["classes"])
    probs = predict_probs(run, CHECK_IMAGES[:n])
    assert probs.argmax(1).tolist() == check["classes"]
    np.testing.assert_allclose(probs.max(1).values.numpy(), check["top_prob"], atol=1e-4)
