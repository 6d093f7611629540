"""Self-training (`--pseudo`): confident pseudo-labels join the training split only, from honest teachers."""
from functools import partial

import pytest
import torch

from kmnist_fa.core.errors import OptionError, RunError
from kmnist_fa.pipelines.teachers import teacher_names
from kmnist_fa.pipelines.training import resume, train
from kmnist_fa.runs.record import RunRecord

from .conftest import Interrupt, lenet_cfg

_cfg = partial(lenet_cfg, aug="none")


def test_pseudo_labels_join_the_training_split_and_resume_rebuilds_them(teacher, kmnist):
    cfg = _cfg(kmnist, pseudo="teacher", pseudo_threshold=0.9)
    whole = train(cfg, name="student", root=teacher, quiet=True, data=kmnist)
    p = whole.record.extra["pseudo"]
    assert p["teachers"] == ["teacher"] and p["of"] == 300 and 0 < p["images"] < 300 and p["targets"] == "hard"
    assert sum(p["per_class"]) == p["images"] and p["confidence_target"] == 1.0  # no label smoothing
    assert whole.record.split.n_train == 1080 + p["images"] and whole.record.split.n_valid == 120  # valid untouched
    with pytest.raises(KeyboardInterrupt):
        train(cfg, name="cut", root=teacher, quiet=True, data=kmnist, cbs=[Interrupt(0)])
    done = resume("cut", root=teacher, quiet=True, data=kmnist)
    a, b = (torch.load(r.path / "model.pth", weights_only=True) for r in (whole, done))
    assert all(torch.equal(a[k], b[k]) for k in a)  # the same pseudo-labels, the same training
    assert RunRecord.read(done.path).extra["pseudo"] == p


def test_teachers_that_saw_the_validation_images_are_refused(teacher, kmnist):
    with pytest.raises(RunError, match=r"--pseudo nothere: no such run"):
        train(_cfg(kmnist, pseudo="nothere"), name="x", root=teacher, quiet=True, data=kmnist)
    with pytest.raises(RunError, match=r"--pseudo teacher: trained on another split \(holdout 10% \(seed 42\)\), so "
                                       r"it saw images this run validates on \(fold 0/5 \(seed 42\)\)"):
        train(_cfg(kmnist, pseudo="teacher", n_folds=5, fold=0), name="leaky", root=teacher, quiet=True, data=kmnist)
    assert not (teacher / "leaky").exists()
    assert teacher_names("a7-f{fold}, b", 3) == ["a7-f3", "b"]
    with pytest.raises(OptionError, match=r"\{fold\} needs a k-fold run"):
        teacher_names("a7-f{fold}", None)


def test_models_show_tells_a_self_trained_run(teacher, kmnist):
    from typer.testing import CliRunner

    from kmnist_fa.cli import app

    train(_cfg(kmnist, epochs=1, pseudo="teacher"), name="shown", root=teacher, quiet=True, data=kmnist)
    r = CliRunner().invoke(app, ["models", "--models-dir", str(teacher), "show", "shown"])
    assert r.exit_code == 0 and "pseudo-labelled test images from teacher (p >= 0.95)" in " ".join(r.output.split())


def test_a_threshold_above_what_smoothed_teachers_give_is_flagged(teacher, kmnist):
    train(_cfg(kmnist, epochs=1, label_smoothing=0.2), name="smooth", root=teacher, quiet=True, data=kmnist)
    said = []
    r = train(_cfg(kmnist, epochs=1, pseudo="smooth", pseudo_threshold=0.95), name="s2", root=teacher, quiet=True,
              data=kmnist, log=said.append)
    assert r.record.extra["pseudo"]["confidence_target"] == 0.82  # 1 - 0.2 + 0.2 / 10
    assert any("above the 0.82 its label-smoothed teachers" in m for m in said)
