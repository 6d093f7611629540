"""Data-parallel training under torchrun (2 CPU processes, gloo): one run folder, synced weights, resumable."""
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from kmnist_fa.data.pipeline import make_dls
from kmnist_fa.data.splits import SplitSpec
from kmnist_fa.runs.record import RunRecord

HARNESS = Path(__file__).resolve().parent / "ddp_harness.py"


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchrun(kmnist, root, name, epochs, dump, *extra):
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
            "--master_port", str(_port()), str(HARNESS), str(kmnist.root), str(root), name, str(epochs), str(dump),
            *extra]


def _env():
    return {**os.environ, "OMP_NUM_THREADS": "1"}


def test_shards_are_disjoint_slices_of_one_order(kmnist):
    """Every process draws the same epoch order (same seed) and keeps its own slice of it."""
    orders = []
    for rank in (0, 1):
        torch.manual_seed(0)
        import random

        random.seed(0)
        dl = make_dls(kmnist, SplitSpec(), "none", 64, "cpu").train
        dl.shard = (rank, 2)
        orders.append(list(dl.get_idxs()))
        assert len(dl) == 1080 // 2 // 64  # whole batches of its own slice (training drops the last)
    a, b = orders
    assert len(a) == len(b) == 540 and not set(a) & set(b) and len(set(a) | set(b)) == 1080


@pytest.mark.slow
@pytest.mark.e2e
def test_two_processes_train_one_run(kmnist, tmp_path):
    root, dump = tmp_path / "models", tmp_path / "dump"
    dump.mkdir()
    r = subprocess.run(_torchrun(kmnist, root, "ddp", 1, dump), env=_env(), capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert [p.name for p in root.iterdir()] == ["ddp"]  # rank 1 wrote nothing of its own
    rec = RunRecord.read(root / "ddp")
    assert rec.complete and rec.extra["distributed"] == {"world_size": 2, "batch_per_process": 16,
                                                         "effective_batch": 32, "lr_rule": "fixed"}
    assert rec.best.accuracy > 0.3  # learned (chance is 0.1), scored on the whole validation set, not a shard
    saved = torch.load(root / "ddp" / "model.pth", weights_only=True)
    ranks = [torch.load(dump / f"rank{i}.pth", weights_only=True) for i in (0, 1)]
    for k in saved:
        assert torch.equal(saved[k], ranks[0][k]) and torch.equal(ranks[0][k], ranks[1][k]), k


@pytest.mark.slow
@pytest.mark.e2e
def test_a_killed_rank_leaves_a_run_that_resumes_under_torchrun(kmnist, tmp_path):
    root, dump = tmp_path / "models", tmp_path / "dump"
    dump.mkdir()
    # enough epochs that the kill after the first lands well before the run could finish
    p = subprocess.Popen(_torchrun(kmnist, root, "cut", 6, dump), env=_env(), stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 240
    while time.time() < deadline:
        try:
            if RunRecord.read(root / "cut").epochs_done >= 1:
                break
        except Exception:
            pass
        time.sleep(0.2)
    kids = subprocess.run(["pgrep", "-f", f"{HARNESS}.*cut"], capture_output=True, text=True).stdout.split()
    os.kill(int(max(kids, key=int)), signal.SIGKILL)  # one worker dies; torchrun stops the other
    p.wait(timeout=120)
    rec = RunRecord.read(root / "cut")
    assert not rec.complete and rec.epochs_done >= 1
    r = subprocess.run(_torchrun(kmnist, root, "cut", 6, dump, "--resume"), env=_env(), capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    rec = RunRecord.read(root / "cut")
    assert rec.complete and [h["epoch"] for h in rec.history] == list(range(1, 7)) and np.isfinite(rec.best.accuracy)
