"""Training: a `TrainConfig` becomes a fastai `Learner`, a fit, and a run folder.

Everything a run needs to be re-created (or resumed) is in `TrainConfig`, which is
stored verbatim in run.json; the CLI and notebooks call `train()` / `resume()` /
`find_lr()` and nothing else.
"""
from __future__ import annotations

import tempfile
import time
import warnings
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Callable

import torch

with warnings.catch_warnings():
    warnings.simplefilter("ignore", FutureWarning)
    from fastai.callback.core import _inner_loop as PER_BATCH_EVENTS
    from fastai.callback.mixup import CutMix, MixUp
    from fastai.callback.progress import ProgressCallback
    from fastai.callback.schedule import ParamScheduler, SchedCos, minimum, slide, steep, valley
    from fastai.learner import Learner
    from fastai.losses import CrossEntropyLossFlat
    from fastai.metrics import accuracy, error_rate
    from fastai.optimizer import SGD, Adam, RMSProp
    from fastai.torch_core import set_seed
    from fastcore.basics import noop

from . import runs
from .data import AUG_PRESETS, default_device, make_dls
from .datasets import MnistData, load_dataset
from .errors import OptionError, RunError
from .models import create_model, get_arch, n_params, splitter
from .splits import SplitSpec
from .transfer import init_from

OPTIMIZERS = {"sgd": SGD, "adam": Adam, "rmsprop": RMSProp}
SCHEDULES = ("one-cycle", "flat", "cosine")


@dataclass
class TrainConfig:
    """Every option of a training run; stored in run.json so a run can be rebuilt."""

    arch: str = "lenet5"
    epochs: int = 10
    bs: int = 64
    lr: float | None = None  # None: lr_find's valley suggestion
    opt: str = "adam"
    mom: float | None = None  # None: the optimiser's default (and one-cycle's momentum cycling)
    wd: float | None = None  # None: fastai's default for the optimiser
    schedule: str = "one-cycle"
    aug: str = "light"
    mixup: bool = False
    cutmix: bool = False
    label_smoothing: float = 0.0
    bn: bool | None = None  # None: the architecture's default
    dropout: float | None = None
    seed: int = 42
    valid_pct: float = 0.1
    n_folds: int | None = None
    fold: int | None = None
    full: bool = False
    cpu: bool = False
    dataset: str | None = None
    data: str | None = None
    from_run: str | None = None  # transfer: parent run (name/folder) or a state_dict .pth file
    freeze_epochs: int = 1  # transfer: epochs with the body frozen before unfreezing
    partial: bool = False  # transfer: skip layers that do not fit instead of failing
    lr_mult: float = 100.0  # transfer: head LR / body LR once unfrozen (fastai fine_tune's default)
    extra: dict = field(default_factory=dict)

    def __post_init__(self):
        get_arch(self.arch)
        checks = [
            (self.epochs >= 1, f"--epochs must be at least 1, got {self.epochs}"),
            (self.bs >= 1, f"--bs must be at least 1, got {self.bs}"),
            (self.lr is None or self.lr > 0, f"--lr must be positive, got {self.lr}"),
            (self.opt in OPTIMIZERS, f"--opt must be one of {', '.join(OPTIMIZERS)}, got {self.opt!r}"),
            (self.mom is None or 0 <= self.mom < 1, f"--mom must be in [0, 1), got {self.mom}"),
            (self.wd is None or self.wd >= 0, f"--wd must be non-negative, got {self.wd}"),
            (self.schedule in SCHEDULES, f"--schedule must be one of {', '.join(SCHEDULES)}, got {self.schedule!r}"),
            (self.aug in AUG_PRESETS, f"--aug must be one of {', '.join(AUG_PRESETS)}, got {self.aug!r}"),
            (not (self.mixup and self.cutmix), "--mixup and --cutmix cannot be used together"),
            (0 <= self.label_smoothing < 1, f"--label-smoothing must be in [0, 1), got {self.label_smoothing}"),
            (self.dropout is None or 0 <= self.dropout < 1, f"--dropout must be in [0, 1), got {self.dropout}"),
            (self.freeze_epochs >= 0, f"--freeze-epochs must be non-negative, got {self.freeze_epochs}"),
            (self.lr_mult >= 1, f"--lr-mult must be at least 1, got {self.lr_mult}"),
        ]
        for ok, msg in checks:
            if not ok:
                raise OptionError(msg)
        self.split  # validates the split options

    @property
    def total_epochs(self) -> int:
        return self.epochs + (self.freeze_epochs if self.from_run else 0)

    @property
    def split(self) -> SplitSpec:
        return SplitSpec(self.valid_pct, self.n_folds, self.fold, self.full, self.seed)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


class CrossEntropyLoss(CrossEntropyLossFlat):
    """fastai's flattened cross-entropy (softmax activation, argmax decoding) on plain tensors.

    fastai's `BaseLoss` re-wraps its inputs as `TensorBase`, so the loss, its backward
    call and the smoothed-loss bookkeeping each went through a Python
    `__torch_function__`; with LeNet5 on a CPU that per-batch overhead showed in bench.py.
    """

    def _contiguous(self, x):
        return x.transpose(self.axis, -1).contiguous().as_subclass(torch.Tensor) if isinstance(x, torch.Tensor) else x


class ToolkitLearner(Learner):
    """fastai's `Learner`, with per-batch events sent only to the callbacks that handle them.

    fastai calls every callback for every event and lets those without a handler do
    nothing: ~35 calls a batch, about 0.3 ms of LeNet5's 7 ms CPU step (bench.py).
    Events outside the batch loop still reach every callback, because
    `Callback.__call__` does bookkeeping there (it re-arms `run` after `after_fit`).
    """

    def __call__(self, event_name):
        if isinstance(event_name, str):
            return self._call_one(event_name)
        return super().__call__(event_name)

    def _call_one(self, event_name):
        if event_name not in PER_BATCH_EVENTS:
            return super()._call_one(event_name)
        handlers = self.__dict__.setdefault("_handlers", {})
        if event_name not in handlers:
            handlers[event_name] = [cb for cb in self.cbs.sorted("order") if hasattr(cb, event_name)]
        for cb in handlers[event_name]:
            cb(event_name)

    def add_cb(self, cb):
        self.__dict__.pop("_handlers", None)
        return super().add_cb(cb)

    def remove_cb(self, cb):
        self.__dict__.pop("_handlers", None)
        return super().remove_cb(cb)


def build_learner(dls, cfg: TrainConfig, model: torch.nn.Module | None = None, quiet: bool = False,
                  progress: Callable | None = None) -> Learner:
    """A fastai Learner for `cfg` on `dls`; `progress` replaces fastai's progress callback."""
    model = model or create_model(cfg.arch, len(dls.vocab), cfg.bn, cfg.dropout)
    opt_kw = {} if cfg.mom is None else {"mom": cfg.mom}
    opt_func = (lambda ps, lr, **kw: OPTIMIZERS[cfg.opt](ps, lr, **{**kw, **opt_kw}))
    cbs = [MixUp()] if cfg.mixup else [CutMix()] if cfg.cutmix else []
    learn = ToolkitLearner(dls, model, loss_func=CrossEntropyLoss(label_smoothing=cfg.label_smoothing),
                    opt_func=opt_func, metrics=[accuracy, error_rate], splitter=splitter, wd=cfg.wd, cbs=cbs,
                    path=Path(tempfile.gettempdir()) / "kmnist-fa", model_dir=".")
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


def _fit(learn: Learner, cfg: TrainConfig, lr: float, start_epoch: int = 0, recorder=None) -> None:
    """Fit from global epoch `start_epoch`; transfer runs follow fastai's fine_tune in two phases."""
    if cfg.from_run:
        n = cfg.freeze_epochs
        if start_epoch < n:
            learn.freeze()
            if recorder:
                recorder.offset, recorder.start_epoch = 0, start_epoch
            learn.fit_one_cycle(n, lr, pct_start=0.99, start_epoch=start_epoch)
        learn.unfreeze()
        if recorder:
            recorder.offset, recorder.start_epoch = n, max(0, start_epoch - n)
        base = lr / 2  # fastai fine_tune halves the LR for the unfrozen phase
        learn.fit_one_cycle(cfg.epochs, slice(base / cfg.lr_mult, base), pct_start=0.3, div=5.0,
                            start_epoch=max(0, start_epoch - n))
        return
    if cfg.schedule == "one-cycle":
        moms = None if cfg.mom is None else (cfg.mom, cfg.mom, cfg.mom)
        learn.fit_one_cycle(cfg.epochs, lr, moms=moms, start_epoch=start_epoch)
    elif cfg.schedule == "cosine":
        learn.fit(cfg.epochs, lr, cbs=ParamScheduler({"lr": SchedCos(lr, lr * 1e-3)}), start_epoch=start_epoch)
    else:
        learn.fit(cfg.epochs, lr, start_epoch=start_epoch)


@dataclass
class TrainResult:
    path: Path
    meta: dict
    learn: Learner


def prepare(cfg: TrainConfig, data: MnistData | None = None):
    """Seeded data + DataLoaders for a config (the same calls in train and resume)."""
    set_seed(cfg.seed, reproducible=True)
    data = data or load_dataset(cfg.dataset, cfg.data)
    dls = make_dls(data, cfg.split, cfg.aug, cfg.bs, default_device(cfg.cpu))
    return data, dls


def train(cfg: TrainConfig, name: str | None = None, root: str | Path | None = None, quiet: bool = False,
          progress: Callable | None = None, data: MnistData | None = None, cbs: list | None = None,
          log: Callable[[str], None] = print) -> TrainResult:
    """Train a model from scratch into `models/<name>/`."""
    name = runs.check_name(name or runs.default_name(cfg.arch))
    path = runs.models_dir(root) / name
    if path.exists() and any(path.iterdir()):
        raise OptionError(f"--name: run {name!r} already exists in {path.parent}; pick another name "
                          f"or `--resume {name}` to continue it")
    data, dls = prepare(cfg, data)
    if "recipe" in cfg.extra:
        log(f"recipe: {cfg.extra['recipe'] or 'none (toolkit defaults)'}")
    model = parent = None
    if cfg.from_run:
        model, parent = init_from(cfg.from_run, cfg.arch, len(data.classes), cfg.bn, cfg.dropout, cfg.partial, root)
        if parent["skipped"]:
            log(f"--from: skipped {len(parent['skipped'])} layers that do not fit: {', '.join(parent['skipped'])}")
    learn = build_learner(dls, cfg, model=model, quiet=quiet, progress=progress)
    if cfg.from_run:
        learn.freeze()  # lr_find on the model as its first phase trains it
    lr, lr_source = cfg.lr, "--lr"
    if lr is None:
        lr, lr_source = suggest_lrs(learn)["valley"], "lr_find valley"
        log(f"lr_find: using the valley suggestion lr={lr:.2e}")
    meta = {
        "format_version": runs.FORMAT_VERSION, "name": name, "status": "running",
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"), "config": cfg.to_dict(),
        "arch": cfg.arch, "n_params": n_params(learn.model), "lr": lr, "lr_source": lr_source,
        "classes": dls.info.classes, "chars": dls.info.chars,
        "norm": {"mean": dls.info.mean, "std": dls.info.std},
        "data": data.provenance(),
        "split": {**cfg.split.to_dict(), "kind": cfg.split.kind, "n_train": len(dls.info.train_idx),
                  "n_valid": len(dls.info.valid_idx)},
        "device": str(dls.device), "versions": runs.versions(), "history": [], "wall_time_s": 0.0,
        "total_epochs": cfg.total_epochs, "parent": parent,
    }
    path.mkdir(parents=True, exist_ok=True)
    runs.write_run(path, meta)
    return _run_fit(learn, cfg, lr, path, meta, 0, cbs)


def _run_fit(learn, cfg, lr, path, meta, start_epoch, cbs, smooth_loss=None) -> TrainResult:
    recorder = runs.RunRecorder(path, meta, start_epoch, smooth_loss)
    learn.add_cbs([recorder, *(cbs or [])])
    try:
        _fit(learn, cfg, lr, start_epoch, recorder)
    finally:
        learn.remove_cbs([recorder, *(cbs or [])])
    meta["status"] = "complete"
    meta["metrics"] = meta.get("best")
    runs.write_run(path, meta)
    (path / runs.CKPT_FILE).unlink(missing_ok=True)
    runs.plot_curves(path, meta["history"])
    # hand back the best epoch's weights, which is what model.pth holds
    learn.model.load_state_dict(runs.load_state(path / runs.MODEL_FILE))
    return TrainResult(path, meta, learn)


def resume(name_or_path: str | Path, root: str | Path | None = None, quiet: bool = False,
           progress: Callable | None = None, data: MnistData | None = None, cbs: list | None = None) -> TrainResult:
    """Continue an interrupted run from its last completed epoch, schedule and RNG included."""
    path = runs.run_path(name_or_path, root)
    meta = runs.read_run(path)
    if meta.get("status") == "complete":
        raise RunError(f"{path}: run is already complete ({meta.get('epochs_done')} epochs); nothing to resume")
    ckpt_file = path / runs.CKPT_FILE
    if not ckpt_file.exists():
        raise RunError(f"{ckpt_file}: missing; the run stopped before finishing its first epoch, start it again")
    cfg = TrainConfig.from_dict(meta["config"])
    data, dls = prepare(cfg, data)
    ckpt = runs.load_state(ckpt_file, dls.device)  # optimiser state must sit beside the parameters
    if data.fingerprint != meta["data"]["fingerprint"]:
        raise RunError(f"{path}: the data found now differs from the data this run was trained on "
                       f"({meta['data']['root']}); pass the same --data")
    model = create_model(cfg.arch, len(data.classes), cfg.bn, cfg.dropout)  # weights come from the checkpoint
    learn = build_learner(dls, cfg, model=model, quiet=quiet, progress=progress)
    learn.model.load_state_dict(ckpt["model"])
    learn.create_opt()
    runs.load_opt_state(learn.opt, ckpt["opt"])
    runs.set_rng_state(ckpt["rng"], dls.train)
    done = ckpt["epoch"] + 1
    meta["history"] = meta["history"][:done]
    return _run_fit(learn, cfg, meta["lr"], path, meta, done, cbs, ckpt.get("smooth_loss"))
