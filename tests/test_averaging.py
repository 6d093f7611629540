"""--ema: the weight average is what gets validated and saved, and a resume continues it exactly."""
from functools import partial

import pytest
import torch

from kmnist_fa import runs
from kmnist_fa.core.errors import RunError
from kmnist_fa.infer.predict import load_run, predict_probs, validation_set
from kmnist_fa.pipelines.training import resume, train
from kmnist_fa.train.checkpoint import load_checkpoint

from .conftest import Interrupt, lenet_cfg

_cfg = partial(lenet_cfg, ema=0.9)


def test_ema_is_validated_saved_and_resumed_exactly(kmnist, tmp_path):
    full = train(_cfg(kmnist), name="full", root=tmp_path, quiet=True, data=kmnist)
    with pytest.raises(KeyboardInterrupt):
        train(_cfg(kmnist), name="cut", root=tmp_path, quiet=True, data=kmnist, cbs=[Interrupt(0)])
    ckpt = torch.load(tmp_path / "cut" / "checkpoint.pth", weights_only=True)
    saved = torch.load(tmp_path / "cut" / "model.pth", weights_only=True)
    avg = {k.removeprefix("module."): v for k, v in ckpt["ema"].items() if k.startswith("module.")}
    assert all(torch.equal(saved[k], avg[k]) for k in saved)  # model.pth is the average ...
    assert not all(torch.equal(saved[k], ckpt["model"][k]) for k in saved)  # ... not the weights being trained
    # a resume re-publishes the best epoch's weights first: here the last commit's, which must be its average
    _, _, best = load_checkpoint(tmp_path / "cut", runs.RunRecord.read(tmp_path / "cut"), "cpu")
    assert all(torch.equal(saved[k], best[k]) for k in saved)

    # the recorded accuracy is the saved model's: the average was what got validated
    run = load_run("cut", root=tmp_path)
    x, y, _ = validation_set(run, kmnist)
    acc = (predict_probs(run, x).argmax(1).numpy() == y).mean()
    assert acc == pytest.approx(runs.RunRecord.read(tmp_path / "cut").history[0]["accuracy"], abs=1e-6)

    done = resume("cut", root=tmp_path, quiet=True, data=kmnist)
    sf, sc = (torch.load(r.path / "model.pth", weights_only=True) for r in (full, done))
    assert all(torch.equal(sf[k], sc[k]) for k in sf)
    assert [h["accuracy"] for h in full.record.history] == [h["accuracy"] for h in done.record.history]


def test_ema_changes_the_model_and_a_checkpoint_without_it_is_refused(kmnist, tmp_path):
    plain = train(_cfg(kmnist, epochs=1, ema=0.0), name="plain", root=tmp_path, quiet=True, data=kmnist)
    ema = train(_cfg(kmnist, epochs=1), name="ema", root=tmp_path, quiet=True, data=kmnist)
    sp, se = (torch.load(r.path / "model.pth", weights_only=True) for r in (plain, ema))
    assert not all(torch.equal(sp[k], se[k]) for k in sp)
    assert ema.record.config.reg.ema == 0.9

    with pytest.raises(KeyboardInterrupt):
        train(_cfg(kmnist), name="cut", root=tmp_path, quiet=True, data=kmnist, cbs=[Interrupt(0)])
    f = tmp_path / "cut" / "checkpoint.pth"
    ckpt = torch.load(f, weights_only=True)
    del ckpt["ema"]
    torch.save(ckpt, f)
    with pytest.raises(RunError, match="no weight average"):
        resume("cut", root=tmp_path, quiet=True, data=kmnist)
