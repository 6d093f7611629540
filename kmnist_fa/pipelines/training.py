"""Training runs: a `TrainConfig` becomes a fit and a run folder, and an interrupted run continues.

Everything a run needs to be re-created (or resumed) is in `TrainConfig`, which
run.json stores; the CLI and notebooks call `train()` / `resume()` (lr-find: `prepare()`, then `train.learner`).
Teachers (self-training's pseudo-labels, distillation's soft targets) are resolved
here and handed to the learner as data and callbacks. A run folder is written by one
process at a time (`runs.run_lock`), with one commit point per epoch
(`train.checkpoint`). Messages go to `log` (the CLI prints them; by default they go to
the `kmnist_fa` logger).
"""
from __future__ import annotations

import dataclasses
import logging
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import fastai
import torch
from fastai.learner import Learner
from fastai.torch_core import num_distrib, set_seed

from .. import __version__, runs
from ..config.options import TrainConfig
from ..config.recipes import lr_source
from ..core.errors import OptionError, RunError
from ..data.datasets import MnistData, load_dataset
from ..data.pipeline import MnistDataLoaders, default_device, make_dls
from ..models.registry import create_model, n_params
from ..runs import DataSource, Norm, RunRecord, SplitSizes
from ..runs.pipeline import pipeline_file, pipeline_of
from ..train import ddp
from ..train.checkpoint import (
    RunRecorder,
    finalize,
    load_checkpoint,
    load_opt_state,
    publish,
    set_rng_state,
)
from ..train.distill import Distill, Teacher, teacher_info
from ..train.ema import WeightEMA
from ..train.learner import build_learner, fit, suggest_lrs
from ..train.transfer import init_from
from .teachers import load_teachers, pseudo_labels

logger = logging.getLogger("kmnist_fa")


@dataclass
class TrainResult:
    path: Path
    record: RunRecord
    learn: Learner


@dataclass(kw_only=True)
class _Job:
    """Where a run is written and how it reports: what `train`/`resume` hand down to the fit."""

    path: Path
    name: str
    root: str | Path | None
    quiet: bool
    progress: Callable | None
    data: MnistData | None
    cbs: list | None
    log: Callable[[str], None]
    writer: bool = True  # False for a data-parallel peer: it trains, never writes


def prepare(cfg: TrainConfig, data: MnistData | None = None, root: str | Path | None = None
            ) -> tuple[MnistData, MnistDataLoaders]:
    """Seeded data + DataLoaders for a config (the same calls in train and resume); `root` is where
    self-training's teacher runs are looked up by name."""
    set_seed(cfg.split.seed, reproducible=True)
    data = data or load_dataset(cfg.data.dataset, cfg.data.data)
    extra = info = None
    if cfg.data.pseudo:
        x, y, info = pseudo_labels(cfg, data, root)  # seeded TTA: the caller's random streams are untouched
        extra = (x, y)
    dls = make_dls(data, cfg.split, cfg.reg.aug, cfg.optim.bs, default_device(cfg.cpu), extra=extra,
                   erase=cfg.reg.erase)
    dls.info.pseudo = info
    return data, dls


def train(cfg: TrainConfig, name: str | None = None, root: str | Path | None = None, quiet: bool = False,
          progress: Callable | None = None, data: MnistData | None = None, cbs: list | None = None,
          log: Callable[[str], None] = logger.info) -> TrainResult:
    """Train a model from scratch into `models/<name>/`.

    The name may be that of a run which stopped before finishing its first epoch:
    nothing of it was worth keeping, so it starts again.
    """
    name = runs.check_name(name or runs.default_name(cfg.arch))
    path = runs.models_dir(root) / name
    own = pipeline_of(cfg)
    if pipeline_file(name, root).is_file() and (own or {}).get("name") != name:
        raise OptionError(f"--name: {name} is a self-training pipeline in {path.parent} (`--resume {name}` continues "
                          "it); pick another name")
    job = _Job(path=path, name=name, root=root, quiet=quiet, progress=progress, data=data, cbs=cbs, log=log)
    with ddp.process_group(default_device(cfg.cpu).type == "cuda"):
        if not ddp.is_writer():
            return _start(cfg, _peer(job))
        created = not path.exists()
        path.mkdir(parents=True, exist_ok=True)
        try:
            with runs.run_lock(path):
                _clear_unstarted(path, name, log)
                return _start(cfg, job)
        except BaseException:
            if created and not any(path.iterdir()):  # refused before it wrote anything: leave no empty folder
                path.rmdir()
            raise


def _peer(job: _Job) -> _Job:
    """The same job for a data-parallel peer: silent, and never writing."""
    return dataclasses.replace(job, quiet=True, progress=None, log=lambda m: None, writer=False)


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


def _start(cfg: TrainConfig, job: _Job) -> TrainResult:
    log = job.log
    data, dls = prepare(cfg, job.data, job.root)
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
        model, parent = init_from(t.from_run, m.arch, len(data.classes), m.bn, m.dropout, t.partial, job.root)
        if parent.skipped:
            log(f"--from: skipped {len(parent.skipped)} layers that do not fit: {', '.join(parent.skipped)}")
    learn = build_learner(dls, cfg, model=model, quiet=job.quiet, progress=job.progress, path=job.path)
    if t.from_run:
        learn.freeze()  # lr_find on the model as its first phase trains it
    teachers = _teachers(cfg, data, job.root, dls)
    lr, source = cfg.optim.lr, lr_source(cfg) if cfg.optim.lr is not None else None
    if lr is None:
        lr, source = find_lr(learn, cfg, teachers)["valley"], "lr_find valley"
        log(f"lr_find: using the valley suggestion lr={lr:.2e}")
    info = dls.info
    record = RunRecord(
        name=job.name, config=cfg, n_params=n_params(learn.model), lr=lr, lr_source=source,
        classes=info.classes, chars=info.chars, norm=Norm(info.mean, info.std), data=DataSource(**data.provenance()),
        split=SplitSizes(len(info.train_idx), len(info.valid_idx)), total_epochs=cfg.total_epochs,
        created=time.strftime("%Y-%m-%dT%H:%M:%S"), device=str(dls.device), versions=versions(), parent=parent)
    if num_distrib() > 1:
        record.extra["distributed"] = ddp.process_info(cfg.optim.bs)
    if info.pseudo:
        record.extra["pseudo"] = info.pseudo
    if teachers:
        record.extra["distill"] = teacher_info(teachers, cfg.reg.distill_weight, cfg.reg.distill_temp)
    if job.writer:
        record.write(job.path)
    return _run_fit(learn, cfg, job, lr=lr, record=record, start_epoch=0, teachers=teachers)


def git_commit() -> str | None:
    """The toolkit's own commit, when it runs from a git checkout."""
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=Path(__file__).parent,
                             capture_output=True, text=True, timeout=5)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def versions() -> dict:
    """What run.json records of the software a run was trained with."""
    return {"kmnist_fa": __version__, "fastai": fastai.__version__, "torch": torch.__version__, "git": git_commit()}


def _teachers(cfg: TrainConfig, data: MnistData, root, dls) -> list[Teacher]:
    return load_teachers(cfg, data, root, dls.device) if cfg.reg.teacher else []


def find_lr(learn: Learner, cfg: TrainConfig, teachers: list[Teacher], plot: str | Path | None = None
            ) -> dict[str, float]:
    """fastai's lr_find on the loss the run will train with: with distillation's soft-target term when it has
    teachers, as the fit adds it."""
    cbs = [Distill(teachers, cfg.reg.distill_weight, cfg.reg.distill_temp, learn.dls.info.mean,
                   learn.dls.info.std)] if teachers else []
    learn.add_cbs(cbs)
    try:
        return suggest_lrs(learn, plot)
    finally:
        learn.remove_cbs(cbs)


def lr_find(cfg: TrainConfig, plot: str | Path | None = None, root: str | Path | None = None,
            progress: Callable | None = None) -> dict[str, float]:
    """What `kmnist-fa lr-find` runs: the run's data (pseudo-labels included), model and loss (distillation's
    teachers included), without training anything."""
    data, dls = prepare(cfg, root=root)
    learn = build_learner(dls, cfg, progress=progress)
    return find_lr(learn, cfg, _teachers(cfg, data, root, dls), plot)


def _run_fit(learn: Learner, cfg: TrainConfig, job: _Job, *, lr: float, record: RunRecord, start_epoch: int,
             smooth_loss: list | None = None, best_state: dict | None = None, ema_state: dict | None = None,
             teachers: list[Teacher] | None = None) -> TrainResult:
    own = [RunRecorder(job.path, record, start_epoch, smooth_loss, best_state)] if job.writer else []
    if cfg.reg.ema:
        own.append(WeightEMA(cfg.reg.ema, ema_state))
    if teachers:
        info = learn.dls.info
        own.append(Distill(teachers, cfg.reg.distill_weight, cfg.reg.distill_temp, info.mean, info.std))
    if num_distrib() > 1:
        own.append(ddp.DDPTrainer())
    added = [*own, *(job.cbs or [])]
    learn.add_cbs(added)
    try:
        if start_epoch < record.total_epochs:
            fit(learn, cfg, lr, start_epoch)
    finally:
        learn.remove_cbs(added)
    if not job.writer:
        return TrainResult(job.path, record, learn)
    finalize(job.path, record)
    # hand back the best epoch's weights, which is what model.pth holds
    learn.model.load_state_dict(runs.load_state(job.path / runs.MODEL_FILE))
    return TrainResult(job.path, record, learn)


def resume(name_or_path: str | Path, root: str | Path | None = None, quiet: bool = False,
           progress: Callable | None = None, data: MnistData | None = None, cbs: list | None = None,
           log: Callable[[str], None] = logger.info) -> TrainResult:
    """Continue an interrupted run from its last committed epoch, schedule and RNG included.

    A run that stopped before committing its first epoch starts again from scratch
    with its saved options, which gives the same result as never having stopped. One
    killed before it saved them (run.json: while loading data or finding a learning
    rate) left nothing to resume, and `train` with its name starts it again.
    """
    path = runs.run_path(name_or_path, root)
    if all(p.match(".*.tmp") for p in path.iterdir()):  # empty, or only a killed write's temp files
        if runs.writer_alive(path):  # still loading its data or finding its learning rate
            raise RunError(f"{path}: another process is training this run; wait for it or stop it first")
        raise RunError(f"{path}: the run stopped before it saved its options ({runs.RUN_FILE}), so there is "
                       f"nothing to resume; `kmnist-fa train` with its options and --name {path.name} starts it again")
    cuda = default_device(RunRecord.read(path).config.cpu).type == "cuda"
    job = _Job(path=path, name=path.name, root=root, quiet=quiet, progress=progress, data=data, cbs=cbs, log=log)
    with ddp.process_group(cuda):
        if not ddp.is_writer():  # data-parallel peers read the checkpoint and never write
            return _resume(_peer(job))
        with runs.run_lock(path):
            runs.remove_leftovers(path)
            return _resume(job)


def _resume(job: _Job) -> TrainResult:
    path = job.path
    record = RunRecord.read(path)
    job.name = record.name
    ckpt_file = path / runs.CKPT_FILE
    if record.complete:
        if job.writer:
            ckpt_file.unlink(missing_ok=True)  # left by a kill between the final run.json and its removal
        raise RunError(f"{path}: run is already complete ({record.epochs_done} epochs); nothing to resume")
    if not ckpt_file.exists():
        if record.epochs_done:
            raise RunError(f"{ckpt_file}: missing, although {record.epochs_done} epochs are recorded; the run "
                           f"cannot continue: train it again under a new --name")
        if job.writer:
            _clear_unstarted(path, record.name, job.log)
        return _start(record.config, job)
    cfg = record.config
    data, dls = prepare(cfg, job.data, job.root)
    if data.fingerprint != record.data.fingerprint:
        raise RunError(f"{path}: the data found now differs from the data this run was trained on "
                       f"({record.data.root}); pass the same --data")
    if record.extra.get("pseudo") != dls.info.pseudo:
        raise RunError(f"{path}: its teachers now label the test images differently from when it started "
                       f"(--pseudo {cfg.data.pseudo}); train it again under a new --name")
    teachers = _teachers(cfg, data, job.root, dls)
    info = teacher_info(teachers, cfg.reg.distill_weight, cfg.reg.distill_temp) if teachers else None
    if record.extra.get("distill") != info:
        raise RunError(f"{path}: its teachers' weights differ from when it started (--teacher {cfg.reg.teacher}); "
                       "train it again under a new --name")
    ckpt, record, best_state = load_checkpoint(path, record, dls.device)
    if job.writer:
        publish(path, record, best_state)  # views that a kill left behind the commit catch up first
    m = cfg.model
    learn = build_learner(dls, cfg, model=create_model(m.arch, len(data.classes), m.bn, m.dropout),
                          quiet=job.quiet, progress=job.progress, path=path)
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
    return _run_fit(learn, cfg, job, lr=record.lr, record=record, start_epoch=record.epochs_done,
                    smooth_loss=ckpt["smooth_loss"], best_state=best_state, ema_state=ckpt.get("ema"),
                    teachers=teachers)
