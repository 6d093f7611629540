import json
from functools import partial

import pytest
import torch
from fastai.callback.core import Callback

from kmnist_fa import runs
from kmnist_fa.config.options import TrainConfig
from kmnist_fa.core.errors import OptionError, RunError
from kmnist_fa.pipelines.training import resume, train

from .conftest import Interrupt, lenet_cfg

_cfg = partial(lenet_cfg, epochs=3)


def test_lenet_learns_well_above_chance(lenet_run):
    rec = lenet_run.record
    assert rec.status == "complete" and rec.epochs_done == 8
    assert rec.best.accuracy > 0.75  # chance is 0.10
    assert rec.split.n_train == 1080 and rec.split.n_valid == 120


def test_run_folder_contents(lenet_run):
    p = lenet_run.path
    assert {f.name for f in p.iterdir()} == {"model.pth", "run.json", "history.csv", "curves.png"}
    sd = torch.load(p / "model.pth", weights_only=True)
    assert set(sd) == set(lenet_run.learn.model.state_dict())
    meta = json.loads((p / "run.json").read_text())
    assert meta["format_version"] == runs.FORMAT_VERSION == 3
    for key in ("config", "norm", "classes", "chars", "data", "split", "history", "best", "wall_time_s", "device",
                "versions", "n_params", "lr"):
        assert key in meta, key
    assert set(meta["config"]) == {"model", "optim", "reg", "split", "transfer", "data", "predict", "cpu", "keep",
                                   "extra"}
    assert runs.RunRecord.from_json(meta) == lenet_run.record
    assert meta["n_params"] == 61_706
    assert meta["data"]["files"]["train_images"]["md5"] == "8d152ee1c62c38c047034d7523ac1774"
    assert len(meta["history"]) == 8
    assert (p / "history.csv").read_text().splitlines()[0].startswith("epoch,train_loss,valid_loss,accuracy")
    best = max(meta["history"], key=lambda h: h["accuracy"])
    assert meta["best"]["epoch"] == best["epoch"]


def test_best_epoch_weights_are_kept(lenet_run):
    sd = torch.load(lenet_run.path / "model.pth", weights_only=True)
    for k, v in lenet_run.learn.model.state_dict().items():
        assert torch.equal(v.cpu(), sd[k])


def test_same_seed_same_weights(kmnist, tmp_path):
    a = train(_cfg(kmnist, epochs=1), name="a", root=tmp_path, quiet=True, data=kmnist)
    b = train(_cfg(kmnist, epochs=1), name="b", root=tmp_path, quiet=True, data=kmnist)
    c = train(_cfg(kmnist, epochs=1, seed=7), name="c", root=tmp_path, quiet=True, data=kmnist)
    sa, sb, sc = (torch.load(r.path / "model.pth", weights_only=True) for r in (a, b, c))
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)


def test_resume_equals_uninterrupted(kmnist, tmp_path):
    full = train(_cfg(kmnist), name="full", root=tmp_path, quiet=True, data=kmnist)
    with pytest.raises(KeyboardInterrupt):
        train(_cfg(kmnist), name="cut", root=tmp_path, quiet=True, data=kmnist, cbs=[Interrupt(1)])
    rec = runs.RunRecord.read(tmp_path / "cut")
    assert rec.status == "running" and rec.epochs_done == 2
    assert (tmp_path / "cut" / "checkpoint.pth").exists()
    done = resume("cut", root=tmp_path, quiet=True, data=kmnist)
    assert done.record.status == "complete" and done.record.epochs_done == 3
    assert not (tmp_path / "cut" / "checkpoint.pth").exists()
    sf = torch.load(full.path / "model.pth", weights_only=True)
    sc = torch.load(done.path / "model.pth", weights_only=True)
    assert all(torch.equal(sf[k], sc[k]) for k in sf)
    assert [h["accuracy"] for h in full.record.history] == [h["accuracy"] for h in done.record.history]
    with pytest.raises(RunError, match="already complete"):
        resume("cut", root=tmp_path, quiet=True, data=kmnist)


def test_full_split_keeps_last_epoch(kmnist, tmp_path):
    r = train(_cfg(kmnist, epochs=2, full=True), name="full", root=tmp_path, quiet=True, data=kmnist)
    assert r.record.split.n_valid == 0 and r.record.best.epoch == 2  # counted from 1
    assert r.record.best.accuracy is None


def test_kfold_runs_use_different_validation(kmnist, tmp_path):
    recs = [train(_cfg(kmnist, epochs=1, n_folds=5, fold=k), name=f"f{k}", root=tmp_path, quiet=True,
                  data=kmnist).record for k in (0, 1)]
    assert recs[0].config.split.fold == 0 and recs[1].config.split.fold == 1
    assert recs[0].split.n_valid == recs[1].split.n_valid == 240


def test_lr_find_when_lr_omitted(kmnist, tmp_path):
    msgs = []
    r = train(_cfg(kmnist, epochs=1, lr=None), name="auto", root=tmp_path, quiet=True, data=kmnist, log=msgs.append)
    assert r.record.lr_source == "lr_find valley" and 1e-6 < r.record.lr < 1
    assert msgs and "valley" in msgs[0]


@pytest.mark.parametrize("opt,schedule", [("sgd", "flat"), ("rmsprop", "cosine")])
def test_optimisers_and_schedules(kmnist, tmp_path, opt, schedule):
    r = train(_cfg(kmnist, epochs=1, opt=opt, schedule=schedule, lr=1e-2 if opt == "sgd" else 1e-3,
                   mom=0.9 if opt == "sgd" else None),
              name="x", root=tmp_path, quiet=True, data=kmnist)
    assert r.record.config.optim.opt == opt and r.record.best.accuracy > 0.2


@pytest.mark.parametrize("mix", ["mixup", "cutmix"])
def test_mixup_and_cutmix_train(kmnist, tmp_path, mix):
    """fastai's MixUp/CutMix swap the loss for a blended one during training; through ToolkitLearner and the
    plain-tensor loss that must still train, and validation must use the real loss again."""
    class Seen(Callback):
        order = 95

        def __init__(self):
            self.train_lf, self.valid_lf = set(), set()

        def after_loss(self):
            (self.train_lf if self.training else self.valid_lf).add(type(self.learn.loss_func).__name__)

    seen = Seen()
    r = train(_cfg(kmnist, epochs=3, **{mix: True}), name=mix, root=tmp_path, quiet=True, data=kmnist, cbs=[seen])
    assert r.record.config.get(mix) and r.record.best.accuracy > 0.3  # chance is 0.1
    assert all(h["train_loss"] is not None for h in r.record.history)  # finite, not NaN (recorded as missing)
    assert "CrossEntropyLossFlat" not in seen.train_lf and seen.valid_lf == {"CrossEntropyLossFlat"}


def test_existing_name_refused(lenet_run):
    with pytest.raises(OptionError, match="already exists"):
        train(TrainConfig.build(), name="lenet-fixture", root=lenet_run.path.parent, quiet=True)


def test_corrupt_and_missing_files(lenet_run, tmp_path):
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(lenet_run.path, bad)
    (bad / "model.pth").write_bytes((bad / "model.pth").read_bytes()[:100])
    with pytest.raises(RunError, match="model.pth: corrupt"):
        runs.load_state(bad / "model.pth")
    (bad / "model.pth").unlink()
    with pytest.raises(RunError, match="model.pth: missing"):
        runs.load_state(bad / "model.pth")
    meta = json.loads((bad / "run.json").read_text())
    meta["format_version"] = 99
    (bad / "run.json").write_text(json.dumps(meta))
    with pytest.raises(RunError, match="newer kmnist-fa"):
        runs.RunRecord.read(bad)
    (bad / "run.json").write_text("{not json")
    with pytest.raises(RunError, match="corrupt JSON"):
        runs.RunRecord.read(bad)


@pytest.mark.parametrize("kw,msg", [
    (dict(epochs=0), "--epochs must be at least 1"),
    (dict(opt="lamb"), "--opt must be one of"),
    (dict(schedule="step"), "--schedule must be one of"),
    (dict(lr=-1.0), "--lr must be positive"),
    (dict(mixup=True, cutmix=True), "cannot be used together"),
    (dict(arch="vgg"), "unknown architecture"),
])
def test_bad_config(kw, msg):
    with pytest.raises(OptionError, match=msg):
        TrainConfig.build(**kw)


def test_event_dispatch_matches_fastai(kmnist):
    """ToolkitLearner sends each event to the same callbacks, in the same order, as fastai's Learner,
    including callbacks added or removed between fits and fastai's re-arming of `run` after a fit."""
    from fastai.learner import Learner

    from kmnist_fa.config.options import SplitSpec
    from kmnist_fa.data.pipeline import make_dls
    from kmnist_fa.train.learner import ToolkitLearner, build_learner

    class Log(Callback):
        def __init__(self, tag, out, order=50):
            self.tag, self.out, self.order = tag, out, order

        def before_batch(self):
            self.out.append((self.tag, "before_batch", self.training))

        def after_loss(self):
            self.out.append((self.tag, "after_loss", self.training))

    class SkipOnce(Callback):  # stops its own calls for the rest of one fit, as fastai callbacks may
        def before_fit(self):
            self.run = False

    def events(learn_cls):
        dls = make_dls(kmnist, SplitSpec(valid_pct=0.02, seed=0), aug="none", bs=256, device="cpu")
        learn = build_learner(dls, TrainConfig.build(arch="lenet5", epochs=1, lr=1e-3), quiet=True)
        learn.__class__ = learn_cls
        log, skip = [], SkipOnce()
        learn.add_cbs([Log("a", log, order=60), Log("b", log, order=5), skip])
        learn.fit(1, 1e-3)
        first = len(log)
        learn.add_cb(Log("c", log, order=30))  # added between fits: must get events
        learn.fit(1, 1e-3)
        second = len(log)
        learn.remove_cb(learn.cbs.filter(lambda c: getattr(c, "tag", None) == "b")[0])  # must not
        learn.fit(1, 1e-3)
        return log, (first, second), skip.run

    ours, (n1, n2), rearmed = events(ToolkitLearner)
    theirs, ns, fastai_rearmed = events(Learner)
    assert ours == theirs and (n1, n2) == ns and rearmed is fastai_rearmed is True
    assert ours[0][:2] == ("b", "before_batch") and ("c", "after_loss", True) in ours[n1:n2]
    assert ("b", "after_loss", False) in ours[n1:n2] and not any(t == "b" for t, *_ in ours[n2:])


class Sabotage(Callback):
    """Zeroes the weights after the last epoch's training, so its validation scores chance."""

    def after_train(self):
        if self.epoch == self.n_epoch - 1:
            with torch.no_grad():
                for p in self.learn.model.parameters():
                    p.zero_()


@pytest.mark.parametrize("keep", ["best", "last"])
def test_keep_decides_which_epoch_model_pth_holds(kmnist, tmp_path, keep):
    r = train(_cfg(kmnist, epochs=2, keep=keep), name=keep, root=tmp_path, quiet=True, data=kmnist, cbs=[Sabotage()])
    accs = [h["accuracy"] for h in r.record.history]
    assert accs[0] > 0.25 and accs[1] < 0.2  # learned, then chance
    assert r.record.best.epoch == (1 if keep == "best" else 2) and r.record.best.accuracy == accs[r.record.best.epoch - 1]
    saved = torch.load(r.path / "model.pth", weights_only=True)
    assert any(v.abs().sum() > 0 for v in saved.values()) == (keep == "best")


@pytest.mark.gpu
@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_trains_on_cuda(kmnist, tmp_path, precision):
    """--precision: fastai's MixedPrecision on a CUDA device still learns, and the run records where it ran."""
    r = train(_cfg(kmnist, epochs=2, precision=precision), name=precision, root=tmp_path, quiet=True, data=kmnist)
    assert r.record.device.startswith("cuda") and r.record.config.optim.precision == precision
    assert r.record.best.accuracy > 0.3 and all(h["train_loss"] is not None for h in r.record.history)


def test_a_resume_prints_only_the_epochs_it_trains_counted_from_1(kmnist, tmp_path):
    """fastai logs a blank row for every epoch SkipToEpoch passes over; the terminal shows the trained ones only,
    numbered as run.json, history.csv, curves.png and the summary number them."""
    import io

    from rich.console import Console

    from kmnist_fa.train.progress import RichProgress

    with pytest.raises(KeyboardInterrupt):
        train(_cfg(kmnist, epochs=3), name="cut", root=tmp_path, quiet=True, data=kmnist, cbs=[Interrupt(0)])
    buf = io.StringIO()
    done = resume("cut", root=tmp_path, data=kmnist, progress=RichProgress(Console(file=buf, width=200)))
    rows = [line.split() for line in buf.getvalue().splitlines() if line.strip()[:1].isdigit()]
    assert [int(r[0]) for r in rows] == [2, 3] and all(len(r) > 2 for r in rows), buf.getvalue()
    assert [h["epoch"] for h in done.record.history] == [1, 2, 3] and 1 <= done.record.best.epoch <= 3
    history_csv = (done.path / "history.csv").read_text().splitlines()
    assert [int(line.split(",")[0]) for line in history_csv[1:]] == [1, 2, 3]


def test_resume_of_a_run_killed_before_run_json_says_to_train_it_again(kmnist, tmp_path):
    """A kill while the data loads or lr_find runs leaves a folder without run.json (at most a temp file): no
    options were saved, so `--resume` says what to do in one line, and `train --name` with them starts it."""
    from typer.testing import CliRunner

    from kmnist_fa.cli import app

    (tmp_path / "early").mkdir()
    (tmp_path / "early" / ".run.json.x1y2.tmp").write_text("{")
    with pytest.raises(RunError, match=r"early: the run stopped before it saved its options \(run\.json\), so "
                                       r"there is nothing to resume; `kmnist-fa train` with its options and --name early starts it again"):
        resume("early", root=tmp_path, quiet=True, data=kmnist)
    r = CliRunner().invoke(app, ["train", "--resume", "early", "--models-dir", str(tmp_path)])
    assert r.exit_code == 2 and "nothing to resume" in r.output and r.output.strip().count("\n") == 0, r.output
    with runs.run_lock(tmp_path / "early"):  # a trainer still loading its data: not to be started again
        with pytest.raises(RunError, match="another process is training this run"):
            resume("early", root=tmp_path, quiet=True, data=kmnist)
    again = train(_cfg(kmnist, epochs=1), name="early", root=tmp_path, quiet=True, data=kmnist)
    assert again.record.complete and not list((tmp_path / "early").glob(".*.tmp"))
