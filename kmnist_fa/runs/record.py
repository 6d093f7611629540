"""run.json: the record of a run, its schema, validation and migration.

`RunRecord` is the one type that reads, validates, migrates and writes run.json;
nothing else touches its keys. A record that does not validate is refused with one
line naming the file, the field and what is wrong, never half-used: a NaN
normalisation or a string where a number belongs would otherwise surface as silent
garbage predictions or tracebacks far from the cause.

`model.pth` is a bare state_dict, so a run loads with `torch.load(weights_only=True)`
and never unpickles code. While a run trains, `checkpoint.pth` is its commit point
(see train/checkpoint.py); run.json, model.pth and history.csv are views of it.

Format versions: 1 (kmnist-fa 0.1: a flat `config`) and 2 (epochs counted from 0)
are migrated in memory when read; format 3 counts epochs from 1, as the terminal,
plots and summaries do, so `best.epoch` is the number a person reads. Writes are
always the current version; a run written by a newer version is refused
with a message to upgrade rather than guessed at.
"""
from __future__ import annotations

import json
import re
import types
import typing
from dataclasses import MISSING, dataclass, field, fields, is_dataclass, make_dataclass
from datetime import datetime
from pathlib import Path

from ..config.options import OPTIONS, TrainConfig, coerce
from ..core.atomic import write_json
from ..core.errors import OptionError, RunError
from ..core.files import open_regular
from ..core.labels import class_label
from .paths import HUB_CONFIG, NAME_RE, RUN_FILE, is_hub_folder

FORMAT_VERSION = 3
MAX_RUN_JSON = 16 << 20  # far above any real run.json (a 200-epoch run is ~60 KB)
MAX_ITEMS = 100_000  # entries in any one list of run.json
_HEX_RE = re.compile(r"^[0-9a-f]{32}$")


# --------------------------------------------------------------------------- typed decoding

class _Invalid(RunError):
    """A field of a run record is wrong; carries the dotted field path (and `from_json` adds the file)."""

    def __init__(self, where: str, problem: str):
        super().__init__(f"{where}: {problem}")


def _decode(tp, value, where: str):
    """`value` (parsed JSON) checked against annotation `tp`; ints are accepted where floats are."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _decode(inner[0], value, where)
    if origin is list:
        if not isinstance(value, list):
            raise _Invalid(where, f"expected a list, got {_show(value)}")
        if len(value) > MAX_ITEMS:
            raise _Invalid(where, f"{len(value):,} entries (at most {MAX_ITEMS:,})")
        return [_decode(args[0], v, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise _Invalid(where, f"expected a table, got {_show(value)}")
        if not args:
            return value
        return {k: _decode(args[1], v, f"{where}.{k}") for k, v in value.items()}
    if is_dataclass(tp):
        if not isinstance(value, dict):
            raise _Invalid(where, f"expected a table, got {_show(value)}")
        hints = typing.get_type_hints(tp)
        kw = {}
        for f in fields(tp):
            if not f.init:
                continue
            if f.name in value:
                kw[f.name] = _decode(hints[f.name], value[f.name], f"{where}.{f.name}" if where else f.name)
            elif f.default is MISSING and f.default_factory is MISSING:
                raise _Invalid(f"{where}.{f.name}" if where else f.name, "missing")
        try:
            return tp(**kw)
        except (OptionError, ValueError) as e:
            raise _Invalid(where or tp.__name__, str(e)) from None
    value, problem = coerce(tp, value)
    if problem:
        raise _Invalid(where, problem)
    return value


def _show(value) -> str:
    s = json.dumps(value, ensure_ascii=True, default=str) if not isinstance(value, str) else repr(value)
    return s if len(s) <= 40 else s[:37] + "..."


def _check(ok: bool, where: str, problem: str) -> None:
    if not ok:
        raise _Invalid(where, problem)


# --------------------------------------------------------------------------- the record

@dataclass
class Norm:
    """The training images' pixel statistics, which every prediction is normalised with."""

    mean: float
    std: float

    def __post_init__(self):
        _check(self.std > 0, "norm.std", f"must be positive, got {self.std}")


@dataclass
class Best:
    """The epoch whose weights model.pth holds: highest valid accuracy, or the last with no validation."""

    epoch: int  # counted from 1
    accuracy: float | None = None
    valid_loss: float | None = None
    train_loss: float | None = None

    def __post_init__(self):
        _check(self.accuracy is None or 0 <= self.accuracy <= 1, "best.accuracy",
               f"must be in [0, 1], got {self.accuracy}")


@dataclass
class DataSource:
    """Which data a run saw: `fingerprint` (MD5 of the training files' MD5s) tells runs' data apart."""

    name: str
    root: str
    fingerprint: str
    named: bool = False
    files: dict[str, dict[str, str]] = field(default_factory=dict)

    def __post_init__(self):
        _check(bool(_HEX_RE.match(self.fingerprint)), "data.fingerprint", "must be 32 lowercase hex digits")


@dataclass
class SplitSizes:
    n_train: int
    n_valid: int

    def __post_init__(self):
        _check(self.n_train >= 0 and self.n_valid >= 0, "split", "image counts must be non-negative")


@dataclass
class Parent:
    """Where a transfer run's starting weights came from (a run, or a state_dict file)."""

    kind: str
    path: str
    weights_md5: str
    name: str | None = None
    arch: str | None = None
    dataset: str | None = None
    data_fingerprint: str | None = None
    classes: list[str] | None = None
    head: str | None = None
    loaded: int | None = None
    skipped: list[str] = field(default_factory=list)
    parent: Parent | None = None

    def __post_init__(self):
        _check(self.kind in ("run", "state_dict"), "parent.kind", f"must be run or state_dict, got {self.kind!r}")


@dataclass
class RunRecord:
    """run.json: what a run was asked to do (`config`), what it found (data, classes, normalisation,
    learning rate) and how far it got (history, best epoch, status)."""

    name: str
    config: TrainConfig
    n_params: int
    lr: float
    lr_source: str
    classes: list[str]
    norm: Norm
    data: DataSource
    split: SplitSizes
    total_epochs: int
    created: str
    chars: list[str] | None = None
    device: str = "cpu"
    versions: dict[str, str | None] = field(default_factory=dict)
    status: str = "running"
    updated: str | None = None
    epochs_done: int = 0
    wall_time_s: float = 0.0
    history: list[dict[str, float | None]] = field(default_factory=list)
    best: Best | None = None
    parent: Parent | None = None
    extra: dict = field(default_factory=dict)  # top-level keys this version does not know, kept as they were
    path: Path | None = field(default=None, compare=False, repr=False)  # the folder it was read from

    def __post_init__(self):
        _check(bool(NAME_RE.match(self.name)), "name", f"{self.name[:60]!r} is not a valid run name")
        _check(self.status in ("running", "complete"), "status", f"must be running or complete, got {self.status!r}")
        _check(self.n_params >= 1, "n_params", f"must be positive, got {self.n_params}")
        _check(self.lr > 0, "lr", f"must be positive, got {self.lr}")
        _check(len(self.classes) >= 2 and len(set(self.classes)) == len(self.classes), "classes",
               "must be at least two distinct names")
        _check(all(0 < len(c) <= 100 for c in self.classes), "classes", "names must be 1-100 characters")
        _check(self.chars is None or (len(self.chars) == len(self.classes) and all(len(c) <= 8 for c in self.chars)),
               "chars", f"must be {len(self.classes)} short strings, one per class")
        _check(self.total_epochs >= 1, "total_epochs", f"must be at least 1, got {self.total_epochs}")
        _check(0 <= self.epochs_done <= self.total_epochs, "epochs_done",
               f"must be in 0..{self.total_epochs}, got {self.epochs_done}")
        _check(self.status == "running" or self.epochs_done == self.total_epochs, "status",
               f"complete, but only {self.epochs_done} of {self.total_epochs} epochs are done")
        _check(len(self.history) == self.epochs_done, "history",
               f"{len(self.history)} rows for {self.epochs_done} epochs done")
        for i, row in enumerate(self.history, 1):
            _check(row.get("epoch") == i, f"history[{i - 1}].epoch", f"must be {i}, got {row.get('epoch')}")
            _check(len(row) <= 64 and all(len(k) <= 64 for k in row), f"history[{i - 1}]",
                   "too many or too long columns")
            row["epoch"] = i  # stored as a whole number, not the float the generic check made of it
        _check(self.best is not None or self.epochs_done == 0, "best", "missing although epochs are done")
        _check(self.best is None or 1 <= self.best.epoch <= self.epochs_done, "best.epoch",
               f"must be one of the epochs done, 1..{self.epochs_done}")
        _check(self.wall_time_s >= 0, "wall_time_s", "must be non-negative")

    # ---- views

    @property
    def arch(self) -> str:
        return self.config.model.arch

    @property
    def split_kind(self) -> str:
        return self.config.split.kind

    @property
    def complete(self) -> bool:
        return self.status == "complete"

    def label(self, i: int) -> str:
        """Display name of class `i`: "お o" when the characters are known."""
        return class_label(self.classes[i], self.chars[i] if self.chars else None)

    # ---- JSON

    def to_json(self) -> dict:
        out = {"format_version": FORMAT_VERSION}
        for f in fields(self):
            if f.name in ("extra", "path"):
                continue
            v = getattr(self, f.name)
            out[f.name] = v.to_dict() if isinstance(v, TrainConfig) else _plain(v)
        return {**out, **{k: v for k, v in self.extra.items() if k not in out}}

    @classmethod
    def from_json(cls, d: dict, source: str | Path = "run.json", path: Path | None = None) -> RunRecord:
        """Validate (and migrate) parsed run.json; any problem is one RunError naming `source` and the field."""
        try:
            if not isinstance(d, dict):
                raise _Invalid("run.json", f"expected a table, got {_show(d)}")
            version = d.get("format_version")
            if isinstance(version, bool) or not isinstance(version, int) or version < 1:
                raise _Invalid("format_version", f"must be a whole number from 1 to {FORMAT_VERSION}, "
                                                 f"got {_show(version)}")
            if version > FORMAT_VERSION:
                raise RunError(f"{source}: written by a newer kmnist-fa (format {version}, this version reads up to "
                               f"{FORMAT_VERSION}); upgrade kmnist-fa")
            d = dict(d)
            for v in range(version, FORMAT_VERSION):
                d = _MIGRATIONS[v](d)
            d.pop("format_version")
            try:
                config = TrainConfig.from_dict(d.pop("config"))
            except KeyError:
                raise _Invalid("config", "missing") from None
            except OptionError as e:
                raise _Invalid("config", str(e)) from None
            known = {f.name for f in fields(cls)} - {"extra", "path", "config"}
            extra = {k: d.pop(k) for k in list(d) if k not in known}
            rec = _decode(_RecordFields, d, "")
            return cls(config=config, extra=extra, path=path, **{f.name: getattr(rec, f.name) for f in fields(rec)})
        except _Invalid as e:
            raise RunError(f"{source}: {e}") from None
        except RecursionError:
            raise RunError(f"{source}: nested too deeply") from None

    @classmethod
    def read(cls, path: str | Path) -> RunRecord:
        """The record of a run folder (or of an exported hub folder, whose config.json holds it under `run`);
        a missing, oversized, corrupt or invalid record is a RunError."""
        path = Path(path)
        hub = is_hub_folder(path)
        f = path / (HUB_CONFIG if hub else RUN_FILE)
        d = read_json(f, MAX_RUN_JSON, "missing (not a kmnist-fa run folder)")
        if hub:
            if not isinstance(d, dict) or not isinstance(d.get("run"), dict):
                raise RunError(f"{f}: not a kmnist-fa export (no 'run' record)")
            d = d["run"]
        return cls.from_json(d, f, path)

    def write(self, path: str | Path | None = None) -> Path:
        path = Path(path or self.path)
        self.updated = datetime.now().isoformat(timespec="seconds")
        self.path = path
        return write_json(path / RUN_FILE, self.to_json())


def read_json(f: Path, limit: int, missing: str):
    """Parsed JSON of a record file kmnist-fa wrote, read as untrusted: a regular file of at most `limit` bytes;
    anything else is one RunError naming `f` (`missing` says what its absence means)."""
    try:
        with open_regular(f) as fh:
            raw = fh.read(limit + 1)
    except FileNotFoundError:
        raise RunError(f"{f}: {missing}") from None
    except OSError as e:
        raise RunError(f"{f}: cannot be read ({e.strerror})") from None
    if len(raw) > limit:
        raise RunError(f"{f}: larger than {limit >> 20} MiB; not a record kmnist-fa wrote")
    try:
        return json.loads(raw.decode("utf-8"))
    except (ValueError, UnicodeDecodeError) as e:  # JSONDecodeError, and ints over Python's digit limit
        raise RunError(f"{f}: corrupt JSON ({str(e)[:120]})") from None
    except RecursionError:
        raise RunError(f"{f}: nested too deeply") from None


def _plain(v):
    """Dataclasses (and lists of them) as JSON-able dicts, dropping nothing."""
    if is_dataclass(v):
        return {f.name: _plain(getattr(v, f.name)) for f in fields(v)}
    if isinstance(v, list):
        return [_plain(x) for x in v]
    return v


def _record_fields():
    """RunRecord's JSON fields but `config`, `extra` and `path`, as a dataclass for `_decode`."""
    hints = typing.get_type_hints(RunRecord)
    spec = []
    for f in fields(RunRecord):
        if f.name in ("config", "extra", "path"):
            continue
        spec.append((f.name, hints[f.name], field(default=f.default, default_factory=f.default_factory)))
    return make_dataclass("_RecordFields", spec)


_RecordFields = _record_fields()


def _migrate_1(d: dict) -> dict:
    """Format 1 (kmnist-fa 0.1): a flat `config`; a top-level `arch`/`metrics` duplicating `config`/`best`;
    `split` repeating the config's split options beside the image counts; early runs lack `total_epochs`."""
    cfg = d.get("config")
    if not isinstance(cfg, dict):
        raise _Invalid("config", f"expected a table, got {_show(cfg)}")
    nested: dict = {}
    for k, v in cfg.items():
        if k in OPTIONS:
            o = OPTIONS[k]
            (nested.setdefault(o.group, {}) if o.group else nested)[k] = v
    nested["extra"] = cfg.get("extra") or {}
    split = d.get("split")
    d = {k: v for k, v in d.items() if k not in ("arch", "metrics")}
    d["config"] = nested
    if "total_epochs" not in d and isinstance(cfg.get("epochs"), int):
        d["total_epochs"] = cfg["epochs"] + (cfg.get("freeze_epochs", 1) if cfg.get("from_run") else 0)
    if isinstance(split, dict):
        d["split"] = {k: split[k] for k in ("n_train", "n_valid") if k in split}
    return d


def _migrate_2(d: dict) -> dict:
    """Format 2 counted epochs from 0 (fastai's index): `best.epoch` and each history row's `epoch` move up one."""
    d = dict(d)
    if isinstance(d.get("best"), dict) and isinstance(d["best"].get("epoch"), int):
        d["best"] = {**d["best"], "epoch": d["best"]["epoch"] + 1}
    if isinstance(d.get("history"), list):
        d["history"] = [{**row, "epoch": row["epoch"] + 1} if isinstance(row, dict) and isinstance(row.get("epoch"), int)
                        else row for row in d["history"]]
    return d


_MIGRATIONS = {1: _migrate_1, 2: _migrate_2}


def lineage(rec: RunRecord) -> list[str]:
    """Human-readable ancestry: this run's parent, the parent's parent ..."""
    out = []
    p = rec.parent
    while p:
        if p.kind == "run":
            out.append(f"{p.name} ({p.arch}, {p.dataset}, weights md5 {p.weights_md5[:8]}, head {p.head or '?'})")
        else:
            out.append(f"state_dict {p.path} (md5 {p.weights_md5[:8]})")
        p = p.parent
    return out
