"""Kill a short training run right after each of its file writes, recover it, compare with an uninterrupted run.

    python tests/crash_harness.py --data DIR --work DIR [--images N] [--epochs E]

Every write of a run goes through `kmnist_fa.core.atomic`: a temp file appears
(`tempfile.mkstemp`), is filled, then renamed over its target (`os.replace`). The
harness first trains once with both calls counted, giving the list of write events;
then, for each event k, it trains again and SIGKILLs the process right after event k,
recovers the way a user would (`train --resume NAME`; `train --name NAME` again when
the kill came before run.json ever existed) and checks the result against the
uninterrupted run: identical final weights, history, best epoch and status, no
checkpoint and no temp file left.

Each training runs in a child forked from this process, which imports torch but
never runs a torch operation itself, so every child starts with fresh thread pools.
Prints one JSON object: {"events": [...], "reference": {...}, "points": [...]}.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import signal
import sys
import tempfile
import traceback
from pathlib import Path


def _fork(fn) -> int:
    """Run `fn` in a forked child; its exit code, or -signal if a signal ended it."""
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            fn()
        except BaseException:
            traceback.print_exc()
            code = 1
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def _count_writes(log_file: Path | None, kill_at: int | None) -> None:
    """Wrap the two calls every atomic write makes; log them and/or die right after number `kill_at`."""
    real_mkstemp, real_replace = tempfile.mkstemp, os.replace
    n = [0]

    def event(what: str) -> None:
        n[0] += 1
        if log_file is not None:
            with open(log_file, "a") as f:
                f.write(what + "\n")
        if n[0] == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)

    def mkstemp(*a, **kw):
        out = real_mkstemp(*a, **kw)
        event("tmp " + kw.get("prefix", "?")[1:-1])  # atomic_path names temp files ".<target>.XXXX.tmp"
        return out

    def replace(src, dst, *a, **kw):
        real_replace(src, dst, *a, **kw)
        event("rename " + Path(dst).name)

    tempfile.mkstemp, os.replace = mkstemp, replace


def _summary(path: Path) -> dict:
    from kmnist_fa.runs.record import RunRecord

    rec = RunRecord.read(path)
    return {"status": rec.status, "epochs_done": rec.epochs_done, "best": dataclasses.asdict(rec.best),
            "history": [{k: v for k, v in h.items() if k != "seconds"} for h in rec.history],
            "files": sorted(p.name for p in path.iterdir())}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", required=True)
    ap.add_argument("--work", required=True)
    ap.add_argument("--images", type=int, default=600)
    ap.add_argument("--epochs", type=int, default=3)
    args = ap.parse_args()

    import torch
    from fastai.callback.core import Callback

    from kmnist_fa.config.options import TrainConfig
    from kmnist_fa.core.errors import RunError
    from kmnist_fa.data.datasets import load_dataset
    from kmnist_fa.pipelines.training import resume, train

    class WorseLastEpoch(Callback):
        """Zeroes the weights after the last epoch's training, so the last epoch scores chance, is not the best,
        and model.pth must come from the weights the checkpoint keeps for the best epoch (deterministic, resumed
        or not)."""

        def after_train(self):
            if self.epoch == self.n_epoch - 1:
                with torch.no_grad():
                    for w in self.learn.model.parameters():
                        w.zero_()

    full = load_dataset(data=args.data)
    data = dataclasses.replace(full, train_x=full.train_x[: args.images], train_y=full.train_y[: args.images])
    cfg = TrainConfig.build(arch="lenet5", epochs=args.epochs, lr=1e-2, bs=16, valid_pct=0.3, aug="light",
                            data=args.data)
    work = Path(args.work)
    quiet = dict(quiet=True, data=data, log=lambda m: None, cbs=[WorseLastEpoch()])

    def run(root: Path, log_file=None, kill_at=None):
        torch.set_num_threads(1)
        _count_writes(log_file, kill_at)
        train(cfg, name="run", root=root, **quiet)

    def recover(root: Path):
        torch.set_num_threads(1)
        try:
            resume("run", root=root, **quiet)
        except RunError as e:
            if "already complete" in str(e):  # killed after the finish was committed: nothing to do
                return
            if "nothing to resume" not in str(e):
                raise
            train(cfg, name="run", root=root, **quiet)  # killed before it saved its options: start it again

    events_file = work / "events.txt"
    assert _fork(lambda: run(work / "reference", events_file)) == 0, "the uninterrupted run failed"
    events = events_file.read_text().split("\n")[:-1]
    ref = _summary(work / "reference" / "run")
    ref_sd = torch.load(work / "reference" / "run" / "model.pth", weights_only=True)
    points = []
    for k, what in enumerate(events, start=1):
        root = work / f"kill{k:03d}"
        killed = _fork(lambda: run(root, kill_at=k))
        point = {"k": k, "after": what, "killed": killed == -signal.SIGKILL}
        if point["killed"]:
            point["recovered"] = _fork(lambda: recover(root)) == 0
            if point["recovered"]:
                got = _summary(root / "run")
                sd = torch.load(root / "run" / "model.pth", weights_only=True)
                point["same_weights"] = sd.keys() == ref_sd.keys() and all(torch.equal(sd[n], ref_sd[n]) for n in sd)
                point["same_record"] = got == ref
                if not point["same_record"]:
                    point["diff"] = {key: got[key] for key in got if got[key] != ref[key]}
        points.append(point)
    print(json.dumps({"events": events, "reference": ref, "points": points}))


if __name__ == "__main__":
    sys.exit(main())
