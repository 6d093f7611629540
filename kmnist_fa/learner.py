"""Training: a `TrainConfig` becomes a fastai `Learner`, a fit, and a run folder.

Everything a run needs to be re-created (or resumed) is in `TrainConfig` (config.py),
which run.json stores; the CLI and notebooks call `train()` / `resume()` /
`suggest_lrs()` and nothing else. A run folder is written by one process at a time
(`runs.run_lock`), with one commit point per epoch (checkpoint.py).
"""
from __future__ import annotations

import contextlib
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from . import quiet_fastai  # noqa: F401  (before fastai: see quiet_fastai.py)
from fastai.callback.fp16 import AMPMode, MixedPrecision
from fastai.callback.mixup import CutMix, MixUp
from fastai.callback.progress import ProgressCallback
from fastai.callback.schedule import ParamScheduler, SchedCos, minimum, slide, steep, valley
from fastai.learner import Learner
from fastai.losses import CrossEntropyLossFlat
from fastai.metrics import accuracy, error_rate
from fastai.optimizer import SGD, Adam, RMSProp
from fastai.torch_core import set_seed
from fastcore.basics import noop

from . import distributed, runs
from .averaging import WeightEMA
from .checkpoint import RunRecorder, finalize, load_checkpoint, load_opt_state, publish, set_rng_state
from .compat import HandlerDispatchLearner
from .config import OPTIMIZERS as OPT_NAMES
from .config import TrainConfig
from .data import default_device, make_dls
from .distill import Distill, load_teachers
from .distill import record_info as distill_info
from .datasets import MnistData, load_dataset
from .errors import OptionError, RunError
from .models import create_model, n_params, splitter
from .runs import DataSource, Norm, RunRecord, SplitSizes
from .transfer import init_from

OPTIMIZERS = dict(zip(OPT_NAMES, (SGD, Adam, RMSProp)))


class ToolkitLearner(HandlerDispatchLearner):
    """fastai's `Learner` (with `compat`'s per-batch dispatch), knowing where a fit sits in its run.

    Fine-tuning fits twice, and the run's epochs, as run.json, history.csv, the terminal
    and pruning callbacks count them, go on from phase one: `_fit` sets `epoch_offset`
    and `run_epochs` before each fit, and callbacks read `run_epoch`.
    """

    epoch_offset: int = 0
    run_epochs: int | None = None

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
    opt_kw = {} if o.mom is None else {"mom": o.mom}
    opt_func = (lambda ps, lr, **kw: OPTIMIZERS[o.opt](ps, lr, **{**kw, **opt_kw}))
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
    """fastai's lr_find with all four suggestions; optionally saves the plot."""
    from .plots import plt, save_fig

    res = learn.lr_find(suggest_funcs=(valley, slide, minimum, steep), show_plot=plot is not None)
    if plot is not None:
        fig = plt.gcf()
        fig.set_size_inches(6, 4)
        save_fig(fig, plot)
    return {k: float(v) for k, v in res._asdict().items()}


def _fit(learn: Learner, cfg: TrainConfig, lr: float, start_epoch: int = 0) -> None:
    """Fit from global epoch `start_epoch`; transfer runs follow fastai's `fine_tune` in two phases."""
    o, t = cfg.optim, cfg.transfer
    moms = None if o.mom is None else (o.mom, o.mom, o.mom)
    learn.run_epochs, learn.epoch_offset = cfg.total_epochs, 0
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


@dataclass
class TrainResult:
    path: Path
    record: RunRecord
    learn: Learner


def prepare(cfg: TrainConfig, data: MnistData | None = None, root: str | Path | None = None):
    """Seeded data + DataLoaders for a config (the same calls in train and resume); `root` is where
    self-training's teacher runs are looked up by name."""
    set_seed(cfg.split.seed, reproducible=True)
    data = data or load_dataset(cfg.data.dataset, cfg.data.data)
    extra = info = None
    if cfg.data.pseudo:
        from .semi import pseudo_labels

        x, y, info = pseudo_labels(cfg, data, root)  # seeded TTA: the caller's random streams are untouched
        extra = (x, y)
    dls = make_dls(data, cfg.split, cfg.reg.aug, cfg.optim.bs, default_device(cfg.cpu), extra=extra,
                   erase=cfg.reg.erase)
    dls.info.pseudo = info
    return data, dls


def train(cfg: TrainConfig, name: str | None = None, root: str | Path | None = None, quiet: bool = False,
          progress: Callable | None = None, data: MnistData | None = None, cbs: list | None = None,
          log: Callable[[str], None] = print) -> TrainResult:
    """Train a model from scratch into `models/<name>/`.

    The name may be that of a run which stopped before finishing its first epoch:
    nothing of it was worth keeping, so it starts again.
    """
    name = runs.check_name(name or runs.default_name(cfg.arch))
    path = runs.models_dir(root) / name
    with distributed.process_group(default_device(cfg.cpu).type == "cuda"):
        if not distributed.is_writer():  # a data-parallel peer: trains, never writes
            return _start(cfg, path, name, root, True, None, data, cbs, lambda m: None, writer=False)
        created = not path.exists()
        path.mkdir(parents=True, exist_ok=True)
        try:
            with runs.run_lock(path):
                _clear_unstarted(path, name, log)
                return _start(cfg, path, name, root, quiet, progress, data, cbs, log)
        except BaseException:
            if created and not any(path.iterdir()):  # refused before it wrote anything: leave no empty folder
                path.rmdir()
            raise


_UNSTARTED_FILES = {runs.RUN_FILE, runs.HISTORY_FILE, runs.CURVES_FILE}


def _clear_unstarted(path: Path, name: str, log: Callable[[str], None]) -> None:
    """Empty `path` if it holds a run that never finished an epoch; refuse anything else."""
    runs.remove_leftovers(path)
    present = {p.name for p in path.iterdir()}
    if not present:
        return
    try:
        rec = runs.RunRecord.read(path)
    except RunError:
        rec = None
    if present <= _UNSTARTED_FILES and rec is not None and rec.epochs_done == 0 and not rec.complete:
        for f in present:
            (path / f).unlink()
        log(f"run {name}: its earlier start stopped before finishing an epoch; starting it again")
        return
    raise OptionError(f"--name: run {name!r} already exists in {path.parent}; pick another name "
                      f"or `--resume {name}` to continue it")


def _start(cfg, path, name, root, quiet, progress, data, cbs, log, writer: bool = True) -> TrainResult:
    data, dls = prepare(cfg, data, root)
    if dls.info.pseudo:
        p = dls.info.pseudo
        log(f"--pseudo: {p['images']:,} of {p['of']:,} test images labelled with probability >= {p['threshold']}")
        if p["threshold"] > p["confidence_target"]:
            log(f"--pseudo-threshold {p['threshold']} is above the {p['confidence_target']} its label-smoothed teachers "
                "were trained to give the true class, so few images pass; consider a lower threshold")
    if "recipe" in cfg.extra:
        log(f"recipe: {cfg.extra['recipe'] or 'none (toolkit defaults)'}")
    model = parent = None
    m, t = cfg.model, cfg.transfer
    if t.from_run:
        model, parent = init_from(t.from_run, m.arch, len(data.classes), m.bn, m.dropout, t.partial, root)
        if parent.skipped:
            log(f"--from: skipped {len(parent.skipped)} layers that do not fit: {', '.join(parent.skipped)}")
    learn = build_learner(dls, cfg, model=model, quiet=quiet, progress=progress, path=path)
    if t.from_run:
        learn.freeze()  # lr_find on the model as its first phase trains it
    lr, lr_source = cfg.optim.lr, "--lr"
    if lr is None:
        lr, lr_source = suggest_lrs(learn)["valley"], "lr_find valley"
        log(f"lr_find: using the valley suggestion lr={lr:.2e}")
    info = dls.info
    record = RunRecord(
        name=name, config=cfg, n_params=n_params(learn.model), lr=lr, lr_source=lr_source,
        classes=info.classes, chars=info.chars, norm=Norm(info.mean, info.std), data=DataSource(**data.provenance()),
        split=SplitSizes(len(info.train_idx), len(info.valid_idx)), total_epochs=cfg.total_epochs,
        created=time.strftime("%Y-%m-%dT%H:%M:%S"), device=str(dls.device), versions=runs.versions(), parent=parent)
    if distributed.world()[1] > 1:
        record.extra["distributed"] = distributed.record_info(cfg.optim.bs)
    if info.pseudo:
        record.extra["pseudo"] = info.pseudo
    teachers = _teachers(cfg, data, root, dls)
    if teachers:
        record.extra["distill"] = distill_info(cfg, teachers)
    if writer:
        record.write(path)
    return _run_fit(learn, cfg, lr, path, record, 0, cbs, writer=writer, teachers=teachers)


def _teachers(cfg: TrainConfig, data: MnistData, root, dls) -> list:
    return load_teachers(cfg, data, root, dls.device) if cfg.reg.teacher else []


def _run_fit(learn, cfg, lr, path, record, start_epoch, cbs, smooth_loss=None, best_state=None,
             writer: bool = True, ema_state: dict | None = None, teachers: list | None = None) -> TrainResult:
    own = [RunRecorder(path, record, start_epoch, smooth_loss, best_state)] if writer else []
    if cfg.reg.ema:
        own.append(WeightEMA(cfg.reg.ema, ema_state))
    if teachers:
        info = learn.dls.info
        own.append(Distill(teachers, cfg.reg.distill_weight, cfg.reg.distill_temp, info.mean, info.std))
    if distributed.world()[1] > 1:
        own.append(distributed.DDPTrainer())
    learn.add_cbs([*own, *(cbs or [])])
    try:
        if start_epoch < record.total_epochs:
            _fit(learn, cfg, lr, start_epoch)
    finally:
        learn.remove_cbs([*own, *(cbs or [])])
    if not writer:
        return TrainResult(path, record, learn)
    finalize(path, record)
    # hand back the best epoch's weights, which is what model.pth holds
    learn.model.load_state_dict(runs.load_state(path / runs.MODEL_FILE))
    return TrainResult(path, record, learn)


def resume(name_or_path: str | Path, root: str | Path | None = None, quiet: bool = False,
           progress: Callable | None = None, data: MnistData | None = None, cbs: list | None = None,
           log: Callable[[str], None] = print) -> TrainResult:
    """Continue an interrupted run from its last committed epoch, schedule and RNG included.

    A run that stopped before committing its first epoch starts again from scratch
    with its saved options, which gives the same result as never having stopped.
    """
    path = runs.run_path(name_or_path, root)
    cuda = default_device(RunRecord.read(path).config.cpu).type == "cuda"
    with distributed.process_group(cuda):
        writer = distributed.is_writer()  # data-parallel peers read the checkpoint and never write
        with runs.run_lock(path) if writer else contextlib.nullcontext():
            return _resume(path, root, writer, quiet, progress, data, cbs, log)


def _resume(path, root, writer, quiet, progress, data, cbs, log) -> TrainResult:
    if not writer:
        quiet, progress, log = True, None, (lambda m: None)
    else:
        runs.remove_leftovers(path)
    record = RunRecord.read(path)
    ckpt_file = path / runs.CKPT_FILE
    if record.complete:
        if writer:
            ckpt_file.unlink(missing_ok=True)  # left by a kill between the final run.json and its removal
        raise RunError(f"{path}: run is already complete ({record.epochs_done} epochs); nothing to resume")
    if not ckpt_file.exists():
        if record.epochs_done:
            raise RunError(f"{ckpt_file}: missing, although {record.epochs_done} epochs are recorded; the run "
                           f"cannot continue: train it again under a new --name")
        if writer:
            _clear_unstarted(path, record.name, log)
        return _start(record.config, path, record.name, root, quiet, progress, data, cbs, log, writer)
    cfg = record.config
    data, dls = prepare(cfg, data, root)
    if data.fingerprint != record.data.fingerprint:
        raise RunError(f"{path}: the data found now differs from the data this run was trained on "
                       f"({record.data.root}); pass the same --data")
    if record.extra.get("pseudo") != dls.info.pseudo:
        raise RunError(f"{path}: its teachers now label the test images differently from when it started "
                       f"(--pseudo {cfg.data.pseudo}); train it again under a new --name")
    teachers = _teachers(cfg, data, root, dls)
    if record.extra.get("distill") != (distill_info(cfg, teachers) if teachers else None):
        raise RunError(f"{path}: its teachers' weights differ from when it started (--teacher {cfg.reg.teacher}); "
                       "train it again under a new --name")
    ckpt, record, best_state = load_checkpoint(path, record, dls.device)
    if writer:
        publish(path, record, best_state)  # views that a kill left behind the commit catch up first
    m = cfg.model
    learn = build_learner(dls, cfg, model=create_model(m.arch, len(data.classes), m.bn, m.dropout),
                          quiet=quiet, progress=progress, path=path)
    if cfg.reg.ema and "ema" not in ckpt:
        raise RunError(f"{ckpt_file}: has no weight average although the run trains with --ema; "
                       "train it again under a new --name")
    try:
        learn.model.load_state_dict(ckpt["model"])
        learn.create_opt()
        load_opt_state(learn.opt, ckpt["opt"])
        set_rng_state(ckpt["rng"], dls.train)
    except (RuntimeError, KeyError, TypeError, ValueError, IndexError) as e:
        raise RunError(f"{ckpt_file}: does not fit this run ({type(e).__name__}: "
                       f"{str(e).splitlines()[0][:120] if str(e) else ''})") from None
    return _run_fit(learn, cfg, record.lr, path, record, record.epochs_done, cbs, ckpt["smooth_loss"],
                    best_state, writer, ckpt.get("ema"), teachers)
