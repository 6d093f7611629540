import pytest
import torch
from fastai.callback.core import Callback
from typer.testing import CliRunner

from kmnist_fa import runs
from kmnist_fa.cli import app
from kmnist_fa.config.options import TrainConfig
from kmnist_fa.core.errors import OptionError, RunError
from kmnist_fa.pipelines.training import train
from kmnist_fa.runs.record import lineage
from kmnist_fa.train.transfer import init_from

from .conftest import write_synthetic


@pytest.fixture(scope="module")
def parent12(tmp_path_factory):
    """A LeNet5 trained on a 12-class toy dataset: the 'other dataset' to transfer from."""
    root = tmp_path_factory.mktemp("xfer")
    data = write_synthetic(root / "toy12", n_train=600, n_classes=12)
    cfg = TrainConfig.build(arch="lenet5", epochs=1, lr=3e-3, data=str(data))
    return train(cfg, name="toy12", root=root / "models", quiet=True)


class Spy(Callback):
    """Records body weights at the end of the frozen phase and the LR groups while unfrozen."""
    order = 60

    def __init__(self):
        self.frozen_body, self.lrs = None, []

    def after_epoch(self):
        if self.learn.epoch_offset == 0 and self.frozen_body is None:
            self.frozen_body = {k: v.detach().clone() for k, v in self.learn.model[0].state_dict().items()}

    def after_batch(self):
        if self.training and len(self.learn.opt.param_lists[0]) and not self.learn.opt.frozen_idx:
            self.lrs.append([h["lr"] for h in self.learn.opt.hypers])


def test_head_recreated_when_classes_differ_kept_when_they_match(parent12, kmnist):
    sd = torch.load(parent12.path / "model.pth", weights_only=True)
    m, info = init_from(str(parent12.path), "lenet5", 10, None, None)
    assert info.head == "re-created" and m[1][-1].out_features == 10
    assert torch.equal(m.state_dict()["0.0.weight"], sd["0.0.weight"])  # body kept
    assert not torch.equal(m.state_dict()["1.1.weight"], sd["1.1.weight"])  # whole head fresh
    m2, info2 = init_from(str(parent12.path), "lenet5", 12, None, None)
    assert info2.head == "kept" and all(torch.equal(v, sd[k]) for k, v in m2.state_dict().items())


def test_fine_tune_frozen_body_then_discriminative_lrs_and_lineage(parent12, kmnist, tmp_path):
    spy = Spy()
    cfg = TrainConfig.build(arch="lenet5", epochs=1, freeze_epochs=1, lr=3e-3, from_run=str(parent12.path),
                      data=str(kmnist.root))
    r = train(cfg, name="child", root=tmp_path, quiet=True, data=kmnist, cbs=[spy])
    parent_sd = torch.load(parent12.path / "model.pth", weights_only=True)
    for k, v in spy.frozen_body.items():  # conv weights untouched while frozen (no BN in lenet5)
        assert torch.equal(v.cpu(), parent_sd[f"0.{k}"]), k
    assert spy.lrs and all(lr[0] < lr[-1] for lr in spy.lrs)  # body LR below head LR
    assert spy.lrs[len(spy.lrs) // 2][-1] / spy.lrs[len(spy.lrs) // 2][0] == pytest.approx(100)
    rec = r.record
    assert rec.epochs_done == rec.total_epochs == 2 and [h["epoch"] for h in rec.history] == [1, 2]
    p = rec.parent
    assert p.name == "toy12" and p.head == "re-created" and len(p.weights_md5) == 32
    assert p.dataset == "toy12" and "toy12" in lineage(rec)[0]
    assert runs.RunRecord.read(r.path).parent == p  # the lineage survives run.json
    out = CliRunner().invoke(app, ["models", "--models-dir", str(tmp_path), "show", "child"])
    assert "child <- toy12 (lenet5" in out.output.replace("\n", "")


def test_state_dict_file_and_mismatch(parent12, kmnist, tmp_path):
    sd = torch.load(parent12.path / "model.pth", weights_only=True)
    torch.save(sd, tmp_path / "w.pth")
    with pytest.raises(RunError, match=r"--from .*w.pth: 2 layers do not fit lenet5 \(1\.5\.bias: \(12,\) vs \(10,\); "
                                       r"1\.5\.weight: \(12, 84\) vs \(10, 84\)\); --partial"):
        init_from(str(tmp_path / "w.pth"), "lenet5", 10, None, None)
    m, info = init_from(str(tmp_path / "w.pth"), "lenet5", 10, None, None, partial=True)
    assert info.skipped == ["1.5.bias", "1.5.weight"] and info.kind == "state_dict"
    assert torch.equal(m.state_dict()["1.1.weight"], sd["1.1.weight"])
    r = CliRunner().invoke(app, ["train", "lenet5", "--from", str(tmp_path / "w.pth"), "--data", str(kmnist.root),
                                 "--models-dir", str(tmp_path / "m"), "-q", "--lr", "1e-3"])
    assert r.exit_code == 2 and "do not fit lenet5" in r.output and r.output.strip().count("\n") == 0


def test_arch_must_match(parent12):
    with pytest.raises(OptionError, match="that run is a lenet5, not a alexnet5"):
        init_from(str(parent12.path), "alexnet5", 10, None, None)


def test_fine_tune_resume_across_phases_equals_uninterrupted(parent12, kmnist, tmp_path):
    from kmnist_fa.pipelines.training import resume

    from .conftest import Interrupt

    cfg = dict(arch="lenet5", epochs=2, freeze_epochs=1, lr=3e-3, from_run=str(parent12.path), data=str(kmnist.root))
    full = train(TrainConfig.build(**cfg), name="full", root=tmp_path, quiet=True, data=kmnist)
    with pytest.raises(KeyboardInterrupt):
        train(TrainConfig.build(**cfg), name="cut", root=tmp_path, quiet=True, data=kmnist, cbs=[Interrupt(0)])
    done = resume("cut", root=tmp_path, quiet=True, data=kmnist)
    a = torch.load(full.path / "model.pth", weights_only=True)
    b = torch.load(done.path / "model.pth", weights_only=True)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert [h["epoch"] for h in done.record.history] == [1, 2, 3]


def test_progress_rows_count_epochs_across_phases(parent12, kmnist, tmp_path):
    """The terminal table numbers fine-tuning epochs on from the frozen phase, as run.json does."""
    import io

    from rich.console import Console

    from kmnist_fa.train.progress import RichProgress

    buf = io.StringIO()
    cfg = TrainConfig.build(arch="lenet5", epochs=2, freeze_epochs=1, lr=3e-3, from_run=str(parent12.path),
                      data=str(kmnist.root))
    res = train(cfg, root=tmp_path, progress=RichProgress(Console(file=buf, width=200)))
    rows = [line.split() for line in buf.getvalue().splitlines() if line.strip()[:1].isdigit()]
    assert [int(r[0]) for r in rows] == [h["epoch"] for h in res.record.history] == [1, 2, 3]


class LRLog(Callback):
    """Every training batch's per-group LR and momentum, frozen phase included."""
    order = 60

    def __init__(self):
        self.log = []

    def after_batch(self):
        if self.training:
            self.log.append([(round(h["lr"], 12), round(h["mom"], 12)) for h in self.learn.opt.hypers])


def test_fine_tune_schedule_equals_fastai_fine_tune(parent12, tmp_path):
    """Both phases, every batch, every parameter group: the LRs (and momenta) of fastai's own fine_tune."""
    from kmnist_fa.data.datasets import load_dataset
    from kmnist_fa.pipelines.training import prepare
    from kmnist_fa.train.learner import build_learner

    data = load_dataset(data=str(parent12.path.parent.parent / "toy12"))
    cfg = TrainConfig.build(arch="lenet5", epochs=2, freeze_epochs=1, lr=4e-3, from_run=str(parent12.path),
                            data=str(data.root))
    ours = LRLog()
    train(cfg, name="ours", root=tmp_path, quiet=True, data=data, cbs=[ours])
    _, dls = prepare(cfg, data)
    model, _ = init_from(str(parent12.path), "lenet5", 12, None, None)
    learn = build_learner(dls, cfg, model=model, quiet=True)
    theirs = LRLog()
    learn.fine_tune(2, base_lr=4e-3, freeze_epochs=1, cbs=[theirs])
    assert len(ours.log) == len(theirs.log) > 0 and ours.log == theirs.log
    frozen = ours.log[len(ours.log) // 6]
    assert frozen[0][0] == pytest.approx(frozen[1][0] / 10)  # slice(base_lr): body BN at lr/10, as fastai


def test_transfer_takes_momentum_and_refuses_other_schedules(parent12, kmnist, tmp_path):
    spy = LRLog()
    cfg = TrainConfig.build(arch="lenet5", epochs=1, freeze_epochs=1, lr=3e-3, mom=0.8, from_run=str(parent12.path),
                            data=str(kmnist.root))
    train(cfg, name="m", root=tmp_path, quiet=True, data=kmnist, cbs=[spy])
    assert {m for row in spy.log for _, m in row} == {0.8}
    with pytest.raises(OptionError, match="--schedule flat: transfer .--from. follows fastai's fine_tune"):
        TrainConfig.build(arch="lenet5", schedule="flat", from_run=str(parent12.path))
    # a run.json written before this check recorded a schedule it did not use: read as what ran
    d = cfg.to_dict()
    d["optim"]["schedule"] = "flat"
    assert TrainConfig.from_dict(d).optim.schedule == "one-cycle"
