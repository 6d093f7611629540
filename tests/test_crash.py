"""Crash consistency: SIGKILL at every write, Ctrl-C, leftovers, two trainers of one run."""
import json
import os
import signal
import subprocess
import sys
import time
from functools import partial
from pathlib import Path

import pytest
from fastai.callback.core import Callback

from kmnist_fa import runs
from kmnist_fa.core.errors import RunError
from kmnist_fa.pipelines.training import resume, train

from .conftest import lenet_cfg, write_synthetic

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_kill_at_every_write_then_resume_equals_uninterrupted(kmnist_dir, tmp_path):
    r = subprocess.run([sys.executable, str(ROOT / "tests" / "crash_harness.py"), "--data", str(kmnist_dir),
                        "--work", str(tmp_path)], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads(r.stdout.strip().splitlines()[-1])
    events, ref, points = res["events"], res["reference"], res["points"]
    # every kind of write is a kill point: a temp file appearing and its rename, for each file of the run
    for f in ("checkpoint.pth", "model.pth", "history.csv", "run.json", "curves.png"):
        assert f"tmp {f}" in events and f"rename {f}" in events, f
    assert len(points) == len(events) >= 25
    # the reference run's last epoch is not its best, so model.pth has to come from the checkpoint's copy
    assert ref["best"]["epoch"] < ref["epochs_done"], ref["history"]
    assert ref["status"] == "complete" and ref["files"] == ["curves.png", "history.csv", "model.pth", "run.json"]
    bad = [p for p in points if not (p["killed"] and p.get("recovered") and p.get("same_weights")
                                      and p.get("same_record"))]
    assert not bad, bad


@pytest.mark.slow
@pytest.mark.e2e
@pytest.mark.parametrize("sig,code,word", [(signal.SIGINT, 130, "interrupted"), (signal.SIGTERM, 143, "terminated")],
                         ids=["ctrl-c", "sigterm"])
def test_a_stopped_run_says_how_to_resume_and_exits_128_plus_signal(tmp_path, sig, code, word):
    data = write_synthetic(tmp_path / "toy", n_train=1000)
    env = {**os.environ, "OMP_NUM_THREADS": "2"}
    cmd = [sys.executable, str(ROOT / "cli.py"), "train", "lenet5", "--epochs", "200", "--lr", "3e-3", "--data",
           str(data), "--name", "cut", "--models-dir", str(tmp_path), "-q"]
    # as from a terminal: SIGINT at its default even if this test process inherited it ignored (as background
    # jobs of a shell do), since Python then never turns it into KeyboardInterrupt
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                         preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    ckpt = tmp_path / "cut" / "checkpoint.pth"
    deadline = time.time() + 120
    while time.time() < deadline and p.poll() is None:  # until an epoch is committed and published
        try:
            if runs.RunRecord.read(tmp_path / "cut").epochs_done >= 1:
                break
        except Exception:
            pass
        time.sleep(0.05)
    assert p.poll() is None, p.communicate()  # 200 epochs: still training after its first commit
    p.send_signal(sig)
    out, err = p.communicate(timeout=60)
    assert p.returncode == code, err
    assert err.strip().splitlines() == [f"{word}: continue with `kmnist-fa train --resume cut --models-dir "
                                        f"{tmp_path}`"]
    rec = runs.RunRecord.read(tmp_path / "cut")
    assert rec.status == "running" and 1 <= rec.epochs_done < 200 and ckpt.exists()
    # run.json still says running, but its writer is gone: listings say so, with the way back
    listed = subprocess.run([sys.executable, str(ROOT / "cli.py"), "models", "--json", "--models-dir", str(tmp_path)],
                            capture_output=True, text=True, check=True)
    row, = (r for r in json.loads(listed.stdout) if r["name"] == "cut")
    assert row["status"] == "interrupted" and row["resume"].startswith("kmnist-fa train --resume cut"), row


_cfg = partial(lenet_cfg, epochs=1)


def test_second_trainer_of_a_run_is_refused(kmnist, tmp_path):
    (tmp_path / "busy").mkdir()
    with runs.run_lock(tmp_path / "busy"):
        with pytest.raises(RunError, match="another process is training this run"):
            train(_cfg(kmnist), name="busy", root=tmp_path, quiet=True, data=kmnist)
    train(_cfg(kmnist), name="busy", root=tmp_path, quiet=True, data=kmnist)  # free again once released


def test_leftover_temp_files_are_cleaned_and_unstarted_runs_restart(kmnist, tmp_path):
    full = train(_cfg(kmnist), name="ref", root=tmp_path, quiet=True, data=kmnist, log=lambda m: None)
    # what a kill during the very first run.json write leaves: the folder and a temp file
    (tmp_path / "again").mkdir()
    (tmp_path / "again" / ".run.json.x1y2.tmp").write_text("{")
    msgs = []
    r = train(_cfg(kmnist), name="again", root=tmp_path, quiet=True, data=kmnist, log=msgs.append)
    assert sorted(p.name for p in r.path.iterdir()) == ["curves.png", "history.csv", "model.pth", "run.json"]
    assert r.record.history[0]["accuracy"] == full.record.history[0]["accuracy"]
    # a run that wrote run.json but never finished an epoch restarts under its name, through train or resume
    rec = runs.RunRecord.read(r.path)
    for f in ("model.pth", "history.csv", "curves.png"):
        (r.path / f).unlink()
    rec.status, rec.epochs_done, rec.history, rec.best = "running", 0, [], None
    rec.write()
    msgs = []
    again = resume("again", root=tmp_path, quiet=True, data=kmnist, log=msgs.append)
    assert any("starting it again" in m for m in msgs) and again.record.complete
    with pytest.raises(Exception, match="already exists"):  # a finished run is never overwritten
        train(_cfg(kmnist), name="again", root=tmp_path, quiet=True, data=kmnist)


@pytest.mark.parametrize("content", [b"", "tensor", "missing-keys"])
def test_damaged_checkpoint_is_one_line(kmnist, tmp_path, content):
    import torch

    with pytest.raises(KeyboardInterrupt):  # one committed epoch, then a checkpoint to damage
        train(_cfg(kmnist, epochs=2), name="cut", root=tmp_path, quiet=True, data=kmnist, cbs=[_StopAfterFirst()])
    ckpt = tmp_path / "cut" / "checkpoint.pth"
    if content == b"":
        ckpt.write_bytes(b"")
    elif content == "tensor":
        torch.save(torch.zeros(3), ckpt)
    else:
        sd = torch.load(ckpt, weights_only=True)
        del sd["opt"], sd["progress"]
        torch.save(sd, ckpt)
    with pytest.raises(RunError) as e:
        resume("cut", root=tmp_path, quiet=True, data=kmnist)
    assert "\n" not in str(e.value) and "checkpoint.pth" in str(e.value)


class _StopAfterFirst(Callback):
    order = 90

    def after_epoch(self):
        raise KeyboardInterrupt
