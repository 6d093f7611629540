"""The learner: a `TrainConfig` becomes a fastai `Learner` and its fit schedule.

`pipelines.training` builds one per run and adds the run's callbacks (checkpoint,
EMA, distillation, DDP); `lr_find` goes through `suggest_lrs`.
"""
from __future__ import annotations

import tempfile
from collections.abc import Callable
from functools import partial
from pathlib import Path

import torch
from fastai.callback.fp16 import AMPMode, MixedPrecision
from fastai.callback.mixup import CutMix, MixUp
from fastai.callback.progress import ProgressCallback
from fastai.callback.schedule import (
    ParamScheduler,
    SchedCos,
    minimum,
    slide,
    steep,
    valley,
)
from fastai.learner import Learner
from fastai.losses import CrossEntropyLossFlat
from fastai.metrics import accuracy, error_rate
from fastai.optimizer import SGD, Adam, RMSProp
from fastcore.basics import noop

from ..config.options import OPTIMIZERS as OPT_NAMES
from ..config.options import TrainConfig
from ..core.errors import OptionError
from ..core.plots import plot_lr_find, save_fig
from ..core.speedups import HandlerDispatchLearner
from ..models.archs import splitter
from ..models.registry import create_model

OPTIMIZERS = dict(zip(OPT_NAMES, (SGD, Adam, RMSProp)))


class ToolkitLearner(HandlerDispatchLearner):
    """fastai's `Learner` (with `core.speedups`' per-batch dispatch), knowing where a fit sits in its run.

    Fine-tuning fits twice, and the run's epochs, as run.json, history.csv, the terminal
    and pruning callbacks count them, go on from phase one: `fit` sets `epoch_offset`
    and `run_epochs` before each fit, and callbacks read `run_epoch`.
    """

    epoch_offset: int = 0
    run_epochs: int | None = None
    resume_epoch: int = 0  # where a resumed fit picks up (fastai's SkipToEpoch passes over the epochs before)

    @property
    def run_epoch(self) -> int:
        return self.epoch_offset + self.epoch


SCRATCH_DIR = Path(tempfile.gettempdir()) / "kmnist-fa"


def build_learner(dls, cfg: TrainConfig, model: torch.nn.Module | None = None, quiet: bool = False,
                  progress: Callable | None = None, path: Path | None = None) -> Learner:
    """A fastai Learner for `cfg` on `dls`; `progress` replaces fastai's progress callback.

    `learn.path` is the run folder, so fastai callbacks that write there (`CSVLogger`,
    `SaveModelCallback`) keep to their run; `model_dir` is outside it (absolute), so the
    scratch weights of `lr_find` never land in a run folder, even when a kill skips the
    clean-up.
    """
    m, o, r = cfg.model, cfg.optim, cfg.reg
    model = model or create_model(m.arch, len(dls.vocab), m.bn, m.dropout)
    opt_func = OPTIMIZERS[o.opt] if o.mom is None else partial(OPTIMIZERS[o.opt], mom=o.mom)
    cbs = [MixUp()] if r.mixup else [CutMix()] if r.cutmix else []
    learn = ToolkitLearner(dls, model, loss_func=CrossEntropyLossFlat(label_smoothing=r.label_smoothing),
                    opt_func=opt_func, metrics=[accuracy, error_rate], splitter=splitter, wd=o.wd, cbs=cbs,
                    path=path or SCRATCH_DIR, model_dir=SCRATCH_DIR)
    if o.precision != "fp32":
        if torch.device(dls.device).type != "cuda":
            raise OptionError(f"--precision {o.precision}: mixed precision needs a CUDA device and this run is on "
                              "the CPU (use fp32: CPU autocast was not measured to help these models)")
        learn.add_cb(MixedPrecision(amp_mode=AMPMode.BF16 if o.precision == "bf16" else AMPMode.FP16))
    if quiet or progress is not None:
        learn.remove_cb(ProgressCallback)
    if quiet:
        learn.logger = noop
    elif progress is not None:
        learn.add_cb(progress)
    return learn


def suggest_lrs(learn: Learner, plot: str | Path | None = None) -> dict[str, float]:
    """fastai's lr_find with all four suggestions; optionally saves the plot (drawn here rather than by fastai,
    whose `minimum` marker sits 10x away from the suggestion it labels)."""
    res = learn.lr_find(suggest_funcs=(valley, slide, minimum, steep), show_plot=False)
    sugg = {k: float(v) for k, v in res._asdict().items()}
    if plot is not None:
        rec = learn.recorder
        skip = 5  # fastai's plot_lr_find drops the last points too: the divergence they show is no guide
        save_fig(plot_lr_find(rec.lrs[:-skip], [float(x) for x in rec.losses[:-skip]], sugg,
                              lowest=sugg["minimum"] * 10), plot)
    return sugg


def fit(learn: Learner, cfg: TrainConfig, lr: float, start_epoch: int = 0) -> None:
    """Fit from global epoch `start_epoch`; transfer runs follow fastai's `fine_tune` in two phases."""
    o, t = cfg.optim, cfg.transfer
    moms = None if o.mom is None else (o.mom, o.mom, o.mom)
    learn.run_epochs, learn.epoch_offset, learn.resume_epoch = cfg.total_epochs, 0, start_epoch
    if t.from_run:  # fastai's fine_tune, with the run's momentum and a resumable start
        n = t.freeze_epochs
        if start_epoch < n:
            learn.freeze()
            learn.fit_one_cycle(n, slice(lr), pct_start=0.99, moms=moms, start_epoch=start_epoch)
        learn.unfreeze()
        learn.epoch_offset = n
        base = lr / 2
        learn.fit_one_cycle(o.epochs, slice(base / t.lr_mult, base), pct_start=0.3, div=5.0, moms=moms,
                            start_epoch=max(0, start_epoch - n))
        return
    if o.schedule == "one-cycle":
        learn.fit_one_cycle(o.epochs, lr, moms=moms, start_epoch=start_epoch)
    elif o.schedule == "cosine":
        learn.fit(o.epochs, lr, cbs=ParamScheduler({"lr": SchedCos(lr, lr * 1e-3)}), start_epoch=start_epoch)
    else:
        learn.fit(o.epochs, lr, start_epoch=start_epoch)
