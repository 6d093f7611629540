"""The per-epoch commit point of a training run, and the files derived from it.

At the end of every epoch `RunRecorder` writes, in this order:

1. `checkpoint.pth`: weights (under `--ema`, the raw ones and the average), optimiser state, every RNG state, the smoothed loss, the
   run's progress (history, best epoch, epochs done, wall time) and, when the best
   epoch is not this one, the best epoch's weights. Its atomic rename *is* the commit.
2. the views: `model.pth` (when the epoch improved), `history.csv`, `run.json`.

A SIGKILL anywhere leaves either the previous commit or this one in checkpoint.pth,
and views at most one epoch behind it; `resume` re-publishes the views from the
checkpoint before it continues, so the resumed run ends with the same weights,
history and best epoch as an uninterrupted one. The finish (`finalize`) writes
curves.png, then run.json with status complete, then removes the checkpoint; a kill
between the last two leaves a stale checkpoint beside a complete run, which the
next open removes.
"""
from __future__ import annotations

import math
import random
import time
from pathlib import Path

import numpy as np
import torch
from fastai.callback.core import Callback
from fastcore.foundation import L

from ..core.atomic import write_csv
from ..core.errors import RunError
from ..core.plots import plt, save_fig
from ..runs.paths import CKPT_FILE, CURVES_FILE, HISTORY_FILE, MODEL_FILE
from ..runs.record import FORMAT_VERSION, Best, RunRecord
from ..runs.weights import cpu_state, load_state, save_state
from .ddp import unwrap

# --------------------------------------------------------------------------- RNG + optimiser state

def rng_state(dl) -> dict:
    """Every RNG training draws from, in weights_only-loadable types."""
    np_state = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
        "dl": dl.rng.getstate(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict, dl) -> None:
    torch.set_rng_state(state["torch"].cpu())
    random.setstate(_tuplify(state["python"]))
    n = state["numpy"]
    np.random.set_state((n[0], n[1].cpu().numpy().astype(np.uint32), *n[2:]))
    dl.rng.setstate(_tuplify(state["dl"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([t.cpu() for t in state["cuda"]])


def _tuplify(o):
    return tuple(_tuplify(x) for x in o) if isinstance(o, (list, tuple)) else o


def opt_state(opt) -> dict:
    # fastai keeps hypers in an `L` and schedulers leave numpy floats in them; weights_only
    # loading refuses both, so store plain lists, dicts and Python numbers.
    sd = opt.state_dict()
    return {"state": [_plain(s) for s in sd["state"]], "hypers": [_plain(h) for h in sd["hypers"]]}


def _plain(d: dict) -> dict:
    return {k: v.item() if isinstance(v, np.generic) else v for k, v in d.items()}


def load_opt_state(opt, sd: dict) -> None:
    opt.load_state_dict({"state": sd["state"], "hypers": L(sd["hypers"])})


# --------------------------------------------------------------------------- checkpoint + views

_CKPT_KEYS = ("model", "opt", "epoch", "rng", "smooth_loss", "progress", "best_model")


def load_checkpoint(path: Path, record: RunRecord, device) -> tuple[dict, RunRecord, dict]:
    """(checkpoint, the record as of the checkpoint's epoch, the best epoch's weights on the CPU)."""
    f = path / CKPT_FILE
    ckpt = load_state(f, device)  # optimiser state must sit beside the parameters
    if not isinstance(ckpt, dict) or any(k not in ckpt for k in _CKPT_KEYS):
        raise RunError(f"{f}: not a checkpoint of this kmnist-fa version (expected {', '.join(_CKPT_KEYS)}); "
                       "start the run again")
    progress = ckpt["progress"]
    try:
        # a checkpoint from before progress carried its format counted epochs as format 2 did
        record = RunRecord.from_json({**record.to_json(), "format_version": 2, **progress}, f, path)
    except TypeError:  # progress is not a table
        raise RunError(f"{f}: progress is not a table; start the run again") from None
    if not isinstance(ckpt["epoch"], int) or record.epochs_done != ckpt["epoch"] + 1:
        raise RunError(f"{f}: epoch {ckpt['epoch']!r} does not match its {record.epochs_done} epochs of history")
    best = ckpt["best_model"] if ckpt["best_model"] is not None else evaluated_state(ckpt)
    return ckpt, record, {k: v.cpu() for k, v in best.items()}


def evaluated_state(ckpt: dict) -> dict:
    """The weights the checkpoint's epoch was validated with: under --ema the average, not the raw `model`."""
    if "ema" not in ckpt:
        return ckpt["model"]
    prefix = "module."  # AveragedModel's state_dict: the averaged module's, plus its n_averaged count
    return {k[len(prefix):]: v for k, v in ckpt["ema"].items() if k.startswith(prefix)}


def publish(path: Path, record: RunRecord, best_state: dict | None = None) -> None:
    """Write the views of a commit: model.pth (when given), history.csv, run.json."""
    if best_state is not None:
        save_state(path / MODEL_FILE, best_state)
    if record.history:
        write_csv(path / HISTORY_FILE, record.history)
    record.write(path)


def finalize(path: Path, record: RunRecord) -> None:
    plot_curves(path, record.history)
    record.status = "complete"
    record.write(path)
    (path / CKPT_FILE).unlink(missing_ok=True)


class RunRecorder(Callback):
    """Commits each epoch to the run folder: checkpoint first, then its views (see the module docstring).

    Runs after fastai's Recorder (order 50) so the epoch's metrics are final. The
    best epoch (highest valid accuracy; with no validation or `--keep last`, the last)
    is what `model.pth` holds, and what run.json's `best` describes.
    """

    order = 55

    def __init__(self, path: Path, record: RunRecord, start_epoch: int = 0, smooth_loss: list | None = None,
                 best_state: dict | None = None):
        self.path, self.record, self.start_epoch, self.smooth_loss = Path(path), record, start_epoch, smooth_loss
        self.best_state = best_state  # the best epoch's weights (CPU), for commits of epochs that are not the best

    def before_fit(self):
        self.t0 = time.time()
        self.wall0 = self.record.wall_time_s
        if self.smooth_loss is not None:  # so a resumed run logs the same train_loss as an uninterrupted one
            sl = self.recorder.smooth_loss
            sl.count, sl.val = self.smooth_loss[0], torch.tensor(self.smooth_loss[1], device=sl.val.device)
            self.smooth_loss = None  # only the first fit of a resume continues the saved average

    def before_epoch(self):
        self._epoch_t0 = time.time()

    def after_epoch(self):
        epoch = getattr(self.learn, "run_epoch", self.epoch)  # fastai's index, from 0
        if epoch < self.start_epoch:  # fastai's SkipToEpoch still fires after_epoch for skipped epochs
            return
        names = list(self.recorder.metric_names)[1:]
        values = dict(zip(names, self.recorder.values[-1] + [None] * (len(names) - len(self.recorder.values[-1]))))
        values.pop("time", None)
        # a diverged loss is recorded as missing: run.json holds finite numbers only
        row = {"epoch": epoch + 1, **{k: _finite(v) for k, v in values.items()},
               "seconds": round(time.time() - self._epoch_t0, 2)}
        rec = self.record
        rec.history.append(row)
        acc = row.get("accuracy")
        improved = rec.best is None or acc is None or rec.config.keep == "last" or (
            rec.best.accuracy is not None and acc > rec.best.accuracy)
        if improved:
            rec.best = Best(epoch + 1, acc, row.get("valid_loss"), row.get("train_loss"))
        rec.epochs_done = epoch + 1
        rec.wall_time_s = round(self.wall0 + time.time() - self.t0, 2)
        model = cpu_state(unwrap(self.learn.model))  # what was validated: the average, under --ema
        ema = getattr(self.learn, "weight_ema", None)
        sl = self.recorder.smooth_loss
        progress = {"format_version": FORMAT_VERSION, "history": rec.history, "best": vars(rec.best),
                    "epochs_done": rec.epochs_done, "wall_time_s": rec.wall_time_s}
        save_state(self.path / CKPT_FILE, {
            "model": model if ema is None else cpu_state(ema.raw_state()), "opt": opt_state(self.learn.opt),
            "epoch": epoch, "rng": rng_state(self.dls.train), "smooth_loss": [sl.count, float(sl.val)],
            "progress": progress, "best_model": None if improved else self.best_state,
            **({} if ema is None else {"ema": cpu_state(ema.avg_state())})})
        if improved:
            self.best_state = model
        publish(self.path, rec, model if improved else None)


def _finite(v) -> float | None:
    if v is None:
        return None
    v = float(v)
    return v if math.isfinite(v) else None


def plot_curves(path: Path, history: list[dict]) -> Path | None:
    """Loss and accuracy per epoch, the picture people look at first."""
    if not history:
        return None

    ep = [h["epoch"] for h in history]

    def col(k):  # missing values (no validation, a diverged loss) leave gaps
        return [math.nan if h.get(k) is None else h[k] for h in history]

    fig, (a, b) = plt.subplots(1, 2, figsize=(8, 3), dpi=100)
    a.plot(ep, col("train_loss"), label="train")
    if any(h.get("valid_loss") is not None for h in history):
        a.plot(ep, col("valid_loss"), label="valid")
    a.set(xlabel="epoch", ylabel="loss", title="loss")
    a.legend()
    if any(h.get("accuracy") is not None for h in history):
        b.plot(ep, col("accuracy"), color="C2")
    else:  # a --full run: say so rather than draw an empty panel
        b.text(0.5, 0.5, "no validation split\n(trained with --full)", ha="center", va="center",
               transform=b.transAxes, color="0.4")
    b.set(xlabel="epoch", ylabel="accuracy", title="valid accuracy")
    fig.tight_layout()
    return save_fig(fig, Path(path) / CURVES_FILE)
