"""--teacher: the loss adds the teachers' soft targets on the same augmented batch, from honest teachers only."""
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from kmnist_fa import runs
from kmnist_fa.core.errors import OptionError, RunError
from kmnist_fa.data.pipeline import make_dls
from kmnist_fa.infer.predict import load_run, predict_probs
from kmnist_fa.pipelines.teachers import load_teachers
from kmnist_fa.pipelines.training import resume, train
from kmnist_fa.runs.record import RunRecord
from kmnist_fa.train.distill import Distill, Teacher

from .conftest import Interrupt, lenet_cfg

_cfg = lenet_cfg


def test_the_loss_is_labels_and_tempered_kl_in_proportion():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3))
    t = Teacher("t", model, 0.5, 0.25, "x")
    cb = Distill([t], weight=0.3, temp=4.0, mean=0.1, std=2.0)
    x, pred, ce = torch.randn(5, 1, 2, 2), torch.randn(5, 3, requires_grad=True), torch.tensor(1.7)
    cb.learn = SimpleNamespace(training=True, xb=(x,), pred=pred, loss_grad=ce, loss=ce.clone())
    cb.after_loss()
    teacher_input = ((x * 2.0 + 0.1) - 0.5) / 0.25  # the student's scale back to pixels, then the teacher's
    p = F.softmax(model(teacher_input) / 4.0, 1).detach()
    kl = (p * (p.log() - F.log_softmax(pred / 4.0, 1))).sum(1).mean()
    assert cb.learn.loss_grad.item() == pytest.approx(0.7 * 1.7 + 0.3 * 16 * kl.item(), rel=1e-5)
    assert cb.learn.loss_grad.requires_grad and cb.learn.loss.item() == pytest.approx(cb.learn.loss_grad.item())
    cb.learn.training, cb.learn.loss_grad = False, ce  # validation keeps the labels' loss
    cb.after_loss()
    assert cb.learn.loss_grad is ce


def test_soft_targets_are_the_teachers_predictions_whatever_the_students_normalisation(teacher, kmnist):
    cfg = _cfg(kmnist, teacher="teacher", distill_temp=1.0)
    (t,) = load_teachers(cfg, kmnist, teacher, "cpu")
    dls = make_dls(kmnist, cfg.split, "none", 64, "cpu", stats=(0.3, 0.4))  # not the teacher's statistics
    xb, _ = dls.valid.one_batch()
    cb = Distill([t], 1.0, 1.0, 0.3, 0.4)
    images = kmnist.train_x[dls.info.valid_idx[:64]]
    want = predict_probs(load_run("teacher", root=teacher), images)
    assert torch.allclose(cb.soft_targets(xb), want, atol=1e-5)
    assert t.digest == load_teachers(cfg, kmnist, teacher, "cpu")[0].digest


def test_distilled_run_records_its_teachers_resumes_exactly_and_refuses_changed_ones(teacher, kmnist):
    cfg = _cfg(kmnist, teacher="teacher", distill_weight=0.8)
    whole = train(cfg, name="student", root=teacher, quiet=True, data=kmnist)
    d = whole.record.extra["distill"]
    assert [x["name"] for x in d["teachers"]] == ["teacher"] and d["weight"] == 0.8 and d["temp"] == 2.0
    plain = train(_cfg(kmnist), name="plain", root=teacher, quiet=True, data=kmnist)
    a, b = (torch.load(r.path / "model.pth", weights_only=True) for r in (whole, plain))
    assert not all(torch.equal(a[k], b[k]) for k in a)  # the soft targets changed the training

    with pytest.raises(KeyboardInterrupt):
        train(cfg, name="cut", root=teacher, quiet=True, data=kmnist, cbs=[Interrupt(0)])
    done = resume("cut", root=teacher, quiet=True, data=kmnist)
    c = torch.load(done.path / "model.pth", weights_only=True)
    assert all(torch.equal(a[k], c[k]) for k in a)
    assert RunRecord.read(done.path).extra["distill"] == d

    with pytest.raises(KeyboardInterrupt):
        train(cfg, name="cut2", root=teacher, quiet=True, data=kmnist, cbs=[Interrupt(0)])
    f = teacher / "teacher" / runs.MODEL_FILE
    saved = f.read_bytes()
    state = torch.load(f, weights_only=True)
    torch.save({k: v + 0.01 if v.is_floating_point() else v for k, v in state.items()}, f)
    try:
        with pytest.raises(RunError, match=r"cut2: its teachers' weights differ from when it started"):
            resume("cut2", root=teacher, quiet=True, data=kmnist)
    finally:
        f.write_bytes(saved)


def test_teachers_that_saw_the_validation_images_are_refused(teacher, kmnist):
    with pytest.raises(RunError, match=r"--teacher nothere: no such run"):
        train(_cfg(kmnist, teacher="nothere"), name="x", root=teacher, quiet=True, data=kmnist)
    with pytest.raises(RunError, match=r"--teacher teacher: trained on another split"):
        train(_cfg(kmnist, teacher="teacher", n_folds=5, fold=0), name="leaky", root=teacher, quiet=True,
              data=kmnist)
    assert not (teacher / "leaky").exists()
    with pytest.raises(OptionError, match=r"--teacher: \{fold\} needs a k-fold run"):
        train(_cfg(kmnist, teacher="t-f{fold}"), name="y", root=teacher, quiet=True, data=kmnist)


def test_models_show_tells_a_distilled_run(teacher, kmnist):
    from typer.testing import CliRunner

    from kmnist_fa.cli import app

    train(_cfg(kmnist, epochs=1, teacher="teacher,teacher"), name="shown", root=teacher, quiet=True, data=kmnist)
    r = CliRunner().invoke(app, ["models", "--models-dir", str(teacher), "show", "shown"])
    out = " ".join(r.output.split())
    assert r.exit_code == 0 and "soft targets of teacher, teacher (weight 0.5, temperature 2.0)" in out
