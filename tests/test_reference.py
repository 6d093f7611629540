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


def test_the_shipped_default_is_what_the_default_recipe_trains():
    """reference/default is the default pipeline's last generation: its record's plan is what `train --recipe
    default --full` resolves today, its teacher ships beside it, and it predicts with the TTA default.json names."""
    from kmnist_fa.config.recipes import resolve_pipeline
    from kmnist_fa.runs.pipeline import PipelineRecord

    pipe = PipelineRecord.read("default", reference_dir())
    assert pipe.status == "complete" and pipe.recipe == "default" and pipe.n_folds is None
    data = pipe.generations[0].options["data"]
    assert [g.to_json() for g in pipe.generations] == \
        [g.to_json() for g in resolve_pipeline("default", {"data": data, "full": True})]
    final, teacher = RunRecord.read(reference_dir() / "default"), RunRecord.read(reference_dir() / "default.g1")
    assert final.config.extra["pipeline"]["generation"] == "g2" and final.extra["pseudo"]["teachers"] == ["default.g1"]
    assert final.config.keep == teacher.config.keep == "last" and final.config.split.full
    assert reference_default()["paths"] == [reference_dir() / "default"]
    assert load_run(reference_dir() / "default").tta == reference_default()["tta"]
