"""Every training option, declared once: type, default, range or choices, and help text.

A run's config is a `TrainConfig` of small groups (data, split, model, optim, reg,
transfer). Each leaf field carries its own metadata (`option(...)`), and everything
else is generated from it: the `train`/`lr-find`/`sweep` command-line options, the
keys a recipe TOML may set, the parameters a sweep may vary, the validation (with
the messages users see) and the `config` section of run.json. Adding an option is
one `option(...)` line in the right group.

Option names are unique across groups, so recipes and the command line use the flat
names (`lr`, `aug`, `n_folds`) while run.json stores the nested groups.

This module imports neither torch nor fastai (nor does the architecture registry it
checks names against): a bad choice or range fails before they load.
"""
from __future__ import annotations

import math
import sys
import typing
from dataclasses import Field, asdict, dataclass, field, fields

from ..core.errors import OptionError
from ..models.registry import get_arch

OPTIMIZERS = ("sgd", "adam", "rmsprop")
SCHEDULES = ("one-cycle", "flat", "cosine")
AUG_PRESETS = ("none", "light", "heavy")
PRECISIONS = ("fp32", "bf16", "fp16")
KEEP = ("best", "last")
TTA_N = 4  # fastai's `tta` default: augmented passes before the clean one is blended in
TTA_BETA = 0.25  # fastai's `tta` default: weight of the clean pass against the mean of the augmented passes

ENSEMBLE_METHODS = ("mean", "vote")
SEED_MAX = 2**32 - 1  # numpy's limit for a seed; torch takes up to 2**64 - 1, and every seed reaches numpy


@dataclass(frozen=True)
class TtaSettings:
    """How a prediction uses test-time augmentation, as one value: what a loaded run predicts with, what the
    shipped default (reference/default.json) sets, what an exported ONNX file carries and its runtime uses.

    `on`: TTA at all; `n`: augmented passes; `beta`: the clean pass's weight against their mean; `aug`: the
    preset the passes replay (None: the run's training preset, `light` for a run trained without one);
    `method`: how an ensemble's members are combined.
    """

    on: bool = False
    n: int = TTA_N
    beta: float = TTA_BETA
    aug: str | None = None
    method: str = "mean"

    def __post_init__(self):
        if not isinstance(self.n, int) or isinstance(self.n, bool) or self.n < 1:
            raise OptionError(f"TTA passes must be a whole number of at least 1, got {self.n!r}")
        if isinstance(self.beta, bool) or not isinstance(self.beta, (int, float)) or not 0 <= self.beta <= 1:
            raise OptionError(f"TTA clean-pass weight must be in [0, 1], got {self.beta!r}")
        if self.aug is not None and self.aug not in AUG_PRESETS:
            raise OptionError(f"TTA augmentation must be one of {', '.join(AUG_PRESETS)}, got {self.aug!r}")
        if self.method not in ENSEMBLE_METHODS:
            raise OptionError(f"--method must be one of {', '.join(ENSEMBLE_METHODS)}, got {self.method!r}")

    @classmethod
    def from_json(cls, d: dict, where: str) -> TtaSettings:
        """From the keys reference/default.json and export metadata use (`tta`, `tta_n`, `tta_beta`, `tta_aug`,
        `method`); a missing key takes its default, a wrong one is refused naming `where`."""
        if not isinstance(d, dict):
            raise OptionError(f"{where}: TTA settings must be a table")
        try:
            return cls(on=bool(d.get("tta", False)), n=d.get("tta_n", TTA_N), beta=d.get("tta_beta", TTA_BETA),
                       aug=d.get("tta_aug"), method=d.get("method", "mean"))
        except OptionError as e:
            raise OptionError(f"{where}: {e}") from None

    def to_json(self) -> dict:
        return {"tta": self.on, "tta_n": self.n, "tta_beta": self.beta, "tta_aug": self.aug, "method": self.method}


def option(default, help: str, *, flag: str | None = None, choices: tuple | None = None,
           min: float | None = None, max: float | None = None, min_open: bool = False, max_open: bool = False,
           recipe: bool = True, sweep: bool = False) -> Field:
    """A config field with what the CLI, recipes, sweeps and validation need to know about it.

    `flag`: the command-line spelling (default `--name-with-dashes`; one without dashes
    is a positional argument that the commands declare themselves); `min`/`max` bound
    the value (`*_open`: the bound itself is excluded); `recipe`: a recipe TOML may set
    it; `sweep`: `kmnist-fa sweep --param` may vary it.
    """
    meta = dict(help=help, flag=flag, choices=choices, min=min, max=max, min_open=min_open, max_open=max_open,
                recipe=recipe, sweep=sweep)
    return field(default=default, metadata=meta)


def _base_type(tp) -> tuple[type, bool]:
    """(int/float/str/bool, optional?) from an annotation such as `float | None`."""
    args = typing.get_args(tp)
    if args:
        inner = [a for a in args if a is not type(None)]
        return inner[0], len(inner) < len(args)
    return tp, False


def _hints(cls) -> dict:
    return typing.get_type_hints(cls, vars(sys.modules[cls.__module__]))


def coerce(t: type, value) -> tuple[object, str | None]:
    """(`value` as type `t`, None), or (value, what is wrong with it) for bool/int/float/str.

    Shared by option checks and run.json validation: ints pass where floats are
    expected, bools never pass as numbers, floats must be finite, strings are bounded.
    """
    shown = repr(value) if len(repr(value)) <= 60 else repr(value)[:57] + "..."
    if t is bool and not isinstance(value, bool):
        return value, f"must be true or false, got {shown}"
    if t is int and (isinstance(value, bool) or not isinstance(value, int)):
        return value, f"must be a whole number, got {shown}"
    if t is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return value, f"must be a number, got {shown}"
        value = float(value)
        if not math.isfinite(value):
            return value, f"must be a finite number, got {value}"
    if t is str and (not isinstance(value, str) or len(value) > 4096):
        return value, f"must be a string of at most 4096 characters, got {shown}"
    return value, None


@dataclass(frozen=True)
class Opt:
    """One leaf option as the generated interfaces see it."""

    name: str
    group: str | None  # attribute of TrainConfig holding it; None for top-level fields
    type: type
    optional: bool
    default: object
    meta: dict

    @property
    def flag(self) -> str:
        return self.meta["flag"] or "--" + self.name.replace("_", "-")

    @property
    def help(self) -> str:
        return self.meta["help"]

    def check(self, value, label: str | None = None):
        """`value` converted to the option's type, or OptionError naming the option."""
        label = label or self.flag
        if value is None:
            if self.optional:
                return None
            raise OptionError(f"{label} must be set (got nothing)")
        value, problem = coerce(self.type, value)
        if problem:
            raise OptionError(f"{label} {problem}")
        m = self.meta
        if m["choices"] is not None and value not in m["choices"]:
            raise OptionError(f"{label} must be one of {', '.join(m['choices'])}, got {value!r:.60}")
        lo, hi = m["min"], m["max"]
        if (lo is not None and (value < lo or (m["min_open"] and value == lo))) or \
                (hi is not None and (value > hi or (m["max_open"] and value == hi))):
            raise OptionError(f"{label} must be {self.range_text()}, got {value}")
        return value

    def range_text(self) -> str:
        m = self.meta
        lo, hi = m["min"], m["max"]
        if hi is not None and lo is not None:
            return f"in {'(' if m['min_open'] else '['}{lo}, {hi}{')' if m['max_open'] else ']'}"
        if lo == 0:
            return "positive" if m["min_open"] else "non-negative"
        if lo is not None:
            return f"greater than {lo}" if m["min_open"] else f"at least {lo}"
        return f"less than {hi}" if m["max_open"] else f"at most {hi}"

    def parse(self, text: str):
        """A value typed as text (a sweep's `--param lr=1e-3,3e-3`), converted and checked."""
        t, s = self.type, text.strip()
        try:
            if self.optional and s.lower() in ("none", "null"):
                v = None
            elif t is bool:
                if s.lower() not in ("true", "false", "1", "0", "yes", "no"):
                    raise ValueError
                v = s.lower() in ("true", "1", "yes")
            else:
                v = t(s)
        except ValueError:
            raise OptionError(f"--param {self.name}: {s!r} is not a valid value") from None
        return self.check(v, f"--param {self.name}")


def _check_fields(obj) -> None:
    """Type, finiteness, range and choices of every leaf option of a group."""
    for o in _group_opts(type(obj), None):
        object.__setattr__(obj, o.name, o.check(getattr(obj, o.name)))


def _group_opts(cls, group: str | None) -> list[Opt]:
    hints = _hints(cls)
    out = []
    for f in fields(cls):
        if "help" in f.metadata:
            t, optional = _base_type(hints[f.name])
            out.append(Opt(f.name, group, t, optional, f.default, dict(f.metadata)))
    return out


# --------------------------------------------------------------------------- the groups

@dataclass
class DataConfig:
    dataset: str | None = option(None, "Named dataset: kmnist, fashion, mnist, k49 (MD5s enforced).", recipe=False)
    data: str | None = option(None, "Folder of MNIST-format files (idx or npz); overrides env KMNIST_FA_DATA.",
                              recipe=False)
    pseudo: str | None = option(None, "Self-training: teacher runs (comma-separated; {fold} becomes this run's "
                                "fold) label the dataset's unlabelled test images with TTA, and the confident ones "
                                "join the training split with hard labels.", recipe=False)
    pseudo_threshold: float = option(0.95, "Self-training: least teacher probability for a pseudo-label.",
                                     min=0, max=1, sweep=True)
    unlabelled: str | None = option(None, "Self-training: the images teachers label instead of the dataset's test "
                                    "images: an MNIST-format file, a folder of MNIST files or of image files, or "
                                    "an image file.", recipe=False)

    def __post_init__(self):
        for k in ("data", "unlabelled"):
            if getattr(self, k) is not None and not isinstance(getattr(self, k), str):  # a Path from Python code
                setattr(self, k, str(getattr(self, k)))
        _check_fields(self)
        if self.unlabelled is not None and self.pseudo is None:
            raise OptionError("--unlabelled names images for self-training to label: it needs --pseudo TEACHER")


@dataclass(frozen=True)
class SplitSpec:
    """Which labelled images validate: a stratified holdout, one of k folds, or none (`full`).

    `seed` is the run's one seed: the split, the initial weights, shuffling and
    augmentation all follow from it.
    """

    valid_pct: float = option(0.1, "Stratified holdout fraction.", min=0, max=1, min_open=True, max_open=True)
    n_folds: int | None = option(None, "Stratified k-fold: number of folds.", min=2)
    fold: int | None = option(None, "Which fold (0-based) validates, with --n-folds.", min=0)
    full: bool = option(False, "Train on every labelled image (no validation).")
    seed: int = option(42, f"Random seed: split, init, shuffling, augmentation (0 to {SEED_MAX:,}: numpy's limit).",
                       min=0, max=SEED_MAX, sweep=True)

    def __post_init__(self):
        _check_fields(self)
        if self.full and (self.n_folds or self.fold is not None):
            raise OptionError("--full trains on everything: it cannot be combined with --n-folds/--fold")
        if self.n_folds is not None:
            if self.fold is None or not 0 <= self.fold < self.n_folds:
                raise OptionError(f"--fold must be in 0..{self.n_folds - 1} with --n-folds {self.n_folds}, "
                                  f"got {self.fold}")
        elif self.fold is not None:
            raise OptionError("--fold needs --n-folds")

    @property
    def kind(self) -> str:
        return "full" if self.full else "kfold" if self.n_folds else "holdout"

    def describe(self) -> str:
        if self.full:
            return "full (no validation)"
        if self.n_folds:
            return f"fold {self.fold}/{self.n_folds} (seed {self.seed})"
        return f"holdout {self.valid_pct:.0%} (seed {self.seed})"


@dataclass
class ModelConfig:
    arch: str = option("lenet5", "Architecture (see `kmnist-fa archs`).", flag="ARCH")
    bn: bool | None = option(None, "Batch norm after conv activations; unset: the architecture's.", sweep=True)
    dropout: float | None = option(None, "Dropout before hidden FC layers; 0 disables; unset: the "
                                   "architecture's.", min=0, max=1, max_open=True, sweep=True)

    def __post_init__(self):
        _check_fields(self)


@dataclass
class OptimConfig:
    epochs: int = option(10, "Epochs to train.", min=1, sweep=True)
    bs: int = option(64, "Batch size.", min=1, sweep=True)
    lr: float | None = option(None, "Learning rate (max LR for one-cycle); unset: lr_find's valley suggestion.",
                              min=0, min_open=True, sweep=True)
    opt: str = option("adam", "Optimiser: " + ", ".join(OPTIMIZERS) + ".", choices=OPTIMIZERS, sweep=True)
    mom: float | None = option(None, "Momentum (Adam: beta1); fixes one-cycle's momentum cycling at this value.",
                               min=0, max=1, max_open=True, sweep=True)
    wd: float | None = option(None, "Weight decay (unset: fastai's default for the optimiser).", min=0, sweep=True)
    schedule: str = option("one-cycle", "LR schedule: " + ", ".join(SCHEDULES) + ".", choices=SCHEDULES, sweep=True)
    precision: str = option("fp32", "Mixed precision, CUDA only: fp32, bf16 or fp16 (fastai's to_bf16/to_fp16; "
                            "master weights stay fp32).", choices=PRECISIONS, sweep=True)

    def __post_init__(self):
        _check_fields(self)


@dataclass
class RegConfig:
    aug: str = option("light", "Batch augmentation: none, light (shift ±2px, rotate ±15°), heavy (+ zoom, warp, "
                      "brightness, contrast).", choices=AUG_PRESETS, sweep=True)
    mixup: bool = option(False, "fastai MixUp callback.", sweep=True)
    cutmix: bool = option(False, "fastai CutMix callback.", sweep=True)
    label_smoothing: float = option(0.0, "Label smoothing.", min=0, max=1, max_open=True, sweep=True)
    erase: float = option(0.0, "Random erasing (cutout): chance per training image of one rectangle replaced by "
                          "noise (fastai's RandomErasing, after normalisation).", min=0, max=1, sweep=True)
    ema: float = option(0.0, "Weight averaging: decay per step of an EMA of the weights, which is what gets "
                        "validated and saved (e.g. 0.99; 0: off).", min=0, max=1, max_open=True, sweep=True)
    teacher: str | None = option(None, "Distillation: teacher runs (comma-separated; {fold} becomes this run's "
                                 "fold) whose mean softened prediction on each augmented training batch is a "
                                 "second target.", recipe=False)
    distill_weight: float = option(0.5, "Distillation: weight of the teachers' soft targets against the labels "
                                   "(1: soft targets only).", min=0, max=1, sweep=True)
    distill_temp: float = option(2.0, "Distillation: softmax temperature of teachers and student in the soft "
                                 "target term.", min=0, min_open=True, sweep=True)

    def __post_init__(self):
        _check_fields(self)
        if self.mixup and self.cutmix:
            raise OptionError("--mixup and --cutmix cannot be used together")


@dataclass
class TransferConfig:
    from_run: str | None = option(None, "Transfer: start from this run's weights (same arch; head re-created if "
                                  "the classes differ) or a state_dict .pth.", flag="--from")
    freeze_epochs: int = option(1, "Transfer: epochs with the body frozen before unfreezing with discriminative "
                                "LRs.", min=0, sweep=True)
    lr_mult: float = option(100.0, "Transfer: head LR / body LR once unfrozen (fastai's fine_tune uses 100).", min=1)
    partial: bool = option(False, "Transfer: skip layers that do not fit (listed) instead of failing.")

    def __post_init__(self):
        _check_fields(self)


@dataclass
class PredictConfig:
    """How the run predicts when nothing else is said (`predict --model RUN`, `export`): a recipe chosen with TTA by
    cross-validation ships its TTA settings with the run instead of in a side file."""

    tta: bool = option(False, "Predict with test-time augmentation by default (predict's --tta/--no-tta overrides).")
    tta_n: int = option(TTA_N, "TTA: augmented passes before the clean one is blended in.", min=1, max=1000)
    tta_beta: float = option(TTA_BETA, "TTA: the clean pass's weight against the mean of the augmented passes.",
                             min=0, max=1)

    def __post_init__(self):
        _check_fields(self)

    def settings(self) -> TtaSettings:
        return TtaSettings(on=self.tta, n=self.tta_n, beta=self.tta_beta)


GROUPS = {"model": ModelConfig, "optim": OptimConfig, "reg": RegConfig, "split": SplitSpec,
          "transfer": TransferConfig, "data": DataConfig, "predict": PredictConfig}


@dataclass
class TrainConfig:
    """Everything a run needs to be re-created or resumed; stored as run.json's `config`.

    Build one from flat option names with `TrainConfig.build(arch="lenet5", lr=3e-3)`;
    read them back as `cfg.optim.lr` (or `cfg.get("lr")` by name).
    """

    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    reg: RegConfig = field(default_factory=RegConfig)
    split: SplitSpec = field(default_factory=SplitSpec)
    transfer: TransferConfig = field(default_factory=TransferConfig)
    data: DataConfig = field(default_factory=DataConfig)
    predict: PredictConfig = field(default_factory=PredictConfig)
    cpu: bool = option(False, "Use the CPU even when CUDA is available.", recipe=False)
    keep: str = option("best", "Which epoch's weights model.pth holds: best (highest valid accuracy) or last "
                       "(what a --full run ships, so k-fold scores of it are not picked on the validation fold).",
                       choices=KEEP)
    extra: dict = field(default_factory=dict)  # provenance only (recipe, sweep, candidate); never read back as options

    def __post_init__(self):
        for g, cls in GROUPS.items():
            if not isinstance(getattr(self, g), cls):
                raise OptionError(f"config.{g} must be a {cls.__name__}")
        _check_fields(self)
        if self.transfer.from_run and self.optim.schedule != "one-cycle":
            raise OptionError(f"--schedule {self.optim.schedule}: transfer (--from) follows fastai's fine_tune, "
                              "which is one-cycle in both phases; drop --schedule (or --from)")
        get_arch(self.model.arch)

    @property
    def arch(self) -> str:
        return self.model.arch

    @property
    def total_epochs(self) -> int:
        return self.optim.epochs + (self.transfer.freeze_epochs if self.transfer.from_run else 0)

    def get(self, name: str):
        o = OPTIONS[name]
        return getattr(getattr(self, o.group) if o.group else self, name)

    def flat(self) -> dict:
        """{option name: value} for every option (the names recipes and the CLI use)."""
        return {n: self.get(n) for n in OPTIONS}

    def replace(self, **flat) -> TrainConfig:
        """A copy with some options changed by flat name (validated like any new config)."""
        return TrainConfig.build(**{**self.flat(), **flat}, extra=dict(self.extra))

    @classmethod
    def build(cls, extra: dict | None = None, **flat) -> TrainConfig:
        """From flat option names; options not given take their defaults."""
        unknown = sorted(set(flat) - set(OPTIONS))
        if unknown:
            raise OptionError(f"unknown option{'s' if len(unknown) > 1 else ''}: {', '.join(unknown)}")
        parts: dict[str, dict] = {g: {} for g in GROUPS}
        top = {}
        for name, value in flat.items():
            o = OPTIONS[name]
            (parts[o.group] if o.group else top)[name] = value
        if extra is not None and not isinstance(extra, dict):
            raise OptionError("config.extra must be a table")
        return cls(**{g: GROUPS[g](**kw) for g, kw in parts.items()}, **top, extra=dict(extra or {}))

    def to_dict(self) -> dict:
        """Nested JSON-able form, as stored in run.json."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        """From `to_dict()` output; unknown keys (options a later version removed) are ignored."""
        if not isinstance(d, dict):
            raise OptionError("config must be a table of option groups")
        flat = {}
        for g in GROUPS:
            sub = d.get(g, {})
            if not isinstance(sub, dict):
                raise OptionError(f"config.{g} must be a table")
            flat.update({k: v for k, v in sub.items() if k in OPTIONS and OPTIONS[k].group == g})
        flat.update({k: v for k, v in d.items() if k in OPTIONS and OPTIONS[k].group is None})
        if flat.get("from_run") and flat.get("schedule", "one-cycle") != "one-cycle":
            flat["schedule"] = "one-cycle"  # what fine-tuning runs of kmnist-fa 0.1 trained with, whatever they recorded
        return cls.build(extra=d.get("extra"), **flat)


def _collect() -> dict[str, Opt]:
    out: dict[str, Opt] = {}
    for g, cls in GROUPS.items():
        for o in _group_opts(cls, g):
            assert o.name not in out, f"option {o.name} declared twice"
            out[o.name] = o
    for o in _group_opts(TrainConfig, None):
        out[o.name] = o
    return out


OPTIONS: dict[str, Opt] = _collect()
RECIPE_KEYS = tuple(n for n, o in OPTIONS.items() if o.meta["recipe"])
SWEEPABLE = tuple(n for n, o in OPTIONS.items() if o.meta["sweep"])


def recipe_values(cfg: TrainConfig) -> dict:
    """What a recipe file records for `cfg`: every set option it may hold, except the split (how a
    run is validated, not how it trains) and, unless the run transfers, the transfer options."""
    def kept(n: str) -> bool:
        group = OPTIONS[n].group
        return (group != "split" or n == "seed") and (group != "transfer" or cfg.transfer.from_run is not None)

    return {n: cfg.get(n) for n in RECIPE_KEYS if cfg.get(n) is not None and kept(n)}
