"""Runs on disk: `models/<name>/` with model.pth, run.json, history.csv, curves.png.

`model.pth` is a bare state_dict and `run.json` holds everything else, so a run loads
with `torch.load(weights_only=True)` and never unpickles code. Every write goes
through a temp file and a rename: killing training at any instant leaves the last
good files in place. `checkpoint.pth` (weights, optimiser, RNG states, epoch) exists
only while a run is unfinished and is what `--resume` continues from.
"""
from __future__ import annotations

import json
import os
import random
import re
import time
import warnings
from datetime import datetime
from pathlib import Path

import numpy as np
import torch

with warnings.catch_warnings():
    warnings.simplefilter("ignore", FutureWarning)
    from fastai.callback.core import Callback
    from fastcore.foundation import L

from . import __version__
from .atomic import torch_save, write_csv, write_json
from .errors import OptionError, RunError

FORMAT_VERSION = 1
MODEL_FILE, RUN_FILE, CKPT_FILE, HISTORY_FILE, CURVES_FILE = (
    "model.pth", "run.json", "checkpoint.pth", "history.csv", "curves.png")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


def models_dir(path: str | Path | None = None) -> Path:
    """Where runs live: `--models-dir` > env `KMNIST_FA_MODELS` > ./models."""
    return Path(path or os.environ.get("KMNIST_FA_MODELS") or "models")


def check_name(name: str) -> str:
    if not _NAME_RE.match(name):
        raise OptionError(f"--name: {name!r} is not a valid run name (letters, digits, '.', '_', '-'; no slashes)")
    return name


def default_name(arch: str) -> str:
    return f"{arch}-{datetime.now():%Y%m%d-%H%M%S}"


def run_path(name_or_path: str | Path, root: str | Path | None = None) -> Path:
    """A run folder from a name (looked up in the models dir) or a path."""
    p = Path(name_or_path)
    if p.is_dir() and (p / RUN_FILE).exists():
        return p
    q = models_dir(root) / str(name_or_path)
    if q.is_dir():
        return q
    raise RunError(f"{name_or_path}: no such run (looked in {p} and {q}); `kmnist-fa models` lists runs")


def read_run(path: str | Path) -> dict:
    """run.json of a run folder, checked for format compatibility."""
    f = Path(path) / RUN_FILE
    try:
        meta = json.loads(f.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise RunError(f"{f}: missing (not a kmnist-fa run folder)") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise RunError(f"{f}: corrupt JSON ({e})") from None
    if not isinstance(meta, dict) or "format_version" not in meta:
        raise RunError(f"{f}: not a kmnist-fa run.json (no format_version)")
    if meta["format_version"] > FORMAT_VERSION:
        raise RunError(f"{f}: written by a newer kmnist-fa (format {meta['format_version']}, this version reads "
                       f"up to {FORMAT_VERSION}); upgrade kmnist-fa")
    return meta


def write_run(path: str | Path, meta: dict) -> None:
    meta["updated"] = datetime.now().isoformat(timespec="seconds")
    write_json(Path(path) / RUN_FILE, meta)


def cpu_state(model) -> dict:
    """state_dict on the CPU, so a run trained on a GPU loads anywhere."""
    return {k: v.detach().cpu() for k, v in model.state_dict().items()}


def load_state(file: str | Path, device="cpu") -> dict:
    """A tensor-only file via `weights_only=True`; corruption becomes a one-line RunError."""
    file = Path(file)
    if not file.exists():
        raise RunError(f"{file}: missing")
    try:
        return torch.load(file, map_location=device, weights_only=True)
    except Exception as e:  # torch raises many types for truncated/garbage files
        raise RunError(f"{file}: corrupt or not a weights-only state file ({type(e).__name__}: {str(e).splitlines()[0][:120]})") from None


def git_commit() -> str | None:
    """The toolkit's own commit, when it runs from a git checkout."""
    import subprocess

    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=Path(__file__).parent,
                             capture_output=True, text=True, timeout=5)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def versions() -> dict:
    import fastai

    return {"kmnist_fa": __version__, "fastai": fastai.__version__, "torch": torch.__version__, "git": git_commit()}


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


# --------------------------------------------------------------------------- the callback

class RunRecorder(Callback):
    """Writes the run folder as training goes: history each epoch, best weights, checkpoint.

    Runs after fastai's Recorder (order 50) so the epoch's metrics are final. The
    best epoch (highest valid accuracy; with no validation, the last) is what
    `model.pth` holds.
    """

    order = 55

    def __init__(self, path: Path, meta: dict, start_epoch: int = 0, smooth_loss: list | None = None):
        self.path, self.meta, self.start_epoch, self.smooth_loss = Path(path), meta, start_epoch, smooth_loss
        self.offset = 0  # epochs of earlier phases (fine-tuning fits twice)

    def before_fit(self):
        self.t0 = time.time()
        self.wall0 = self.meta.get("wall_time_s", 0.0)
        if self.smooth_loss is not None:  # so a resumed run logs the same train_loss as an uninterrupted one
            sl = self.recorder.smooth_loss
            sl.count, sl.val = self.smooth_loss[0], torch.tensor(self.smooth_loss[1], device=sl.val.device)
            self.smooth_loss = None  # only the first fit of a resume continues the saved average

    def after_epoch(self):
        if self.epoch < self.start_epoch:  # fastai's SkipToEpoch still fires after_epoch for skipped epochs
            return
        names = list(self.recorder.metric_names)[1:]
        row = dict(zip(names, self.recorder.values[-1] + [None] * (len(names) - len(self.recorder.values[-1]))))
        row.pop("time", None)
        epoch = self.offset + self.epoch
        row = {"epoch": epoch, **{k: (None if v is None else float(v)) for k, v in row.items()},
               "seconds": round(time.time() - self._epoch_t0, 2) if hasattr(self, "_epoch_t0") else None}
        history = self.meta.setdefault("history", [])
        history.append(row)
        acc = row.get("accuracy")
        best = self.meta.get("best")
        improved = best is None or acc is None or (best.get("accuracy") is not None and acc > best["accuracy"])
        if improved:
            self.meta["best"] = {"epoch": epoch, "accuracy": acc, "valid_loss": row.get("valid_loss"),
                                 "train_loss": row.get("train_loss")}
            torch_save(self.path / MODEL_FILE, cpu_state(self.learn.model))
        self.meta["epochs_done"] = epoch + 1
        self.meta["wall_time_s"] = round(self.wall0 + time.time() - self.t0, 2)
        write_history(self.path, history)
        sl = self.recorder.smooth_loss
        torch_save(self.path / CKPT_FILE, {
            "model": cpu_state(self.learn.model), "opt": opt_state(self.learn.opt), "epoch": epoch,
            "rng": rng_state(self.dls.train), "smooth_loss": [sl.count, float(sl.val)]})
        write_run(self.path, self.meta)

    def before_epoch(self):
        self._epoch_t0 = time.time()


def write_history(path: Path, history: list[dict]) -> None:
    if history:
        write_csv(Path(path) / HISTORY_FILE, history)


def plot_curves(path: Path, history: list[dict]) -> Path | None:
    """Loss and accuracy per epoch, the picture people look at first."""
    if not history:
        return None
    from .plots import plt, save_fig

    ep = [h["epoch"] + 1 for h in history]
    fig, (a, b) = plt.subplots(1, 2, figsize=(8, 3), dpi=100)
    a.plot(ep, [h["train_loss"] for h in history], label="train")
    if any(h.get("valid_loss") is not None for h in history):
        a.plot(ep, [h.get("valid_loss") for h in history], label="valid")
    a.set(xlabel="epoch", ylabel="loss", title="loss")
    a.legend()
    if any(h.get("accuracy") is not None for h in history):
        b.plot(ep, [h.get("accuracy") for h in history], color="C2")
    b.set(xlabel="epoch", ylabel="accuracy", title="valid accuracy")
    fig.tight_layout()
    return save_fig(fig, Path(path) / CURVES_FILE)


def list_runs(root: str | Path | None = None) -> list[dict]:
    """run.json of every run under the models dir (unreadable ones marked, not fatal)."""
    base = models_dir(root)
    out = []
    for p in sorted(base.glob(f"**/{RUN_FILE}")):
        try:
            meta = read_run(p.parent)
        except RunError as e:
            meta = {"name": str(p.parent.relative_to(base)), "error": str(e)}
        meta["_path"] = str(p.parent)
        out.append(meta)
    return out


def reference_dir() -> Path:
    """The reference runs shipped with the toolkit (models/reference/ in the checkout)."""
    return Path(__file__).resolve().parents[1] / "models" / "reference"


def reference_default() -> dict:
    """The shipped default ensemble (models/reference/default.json): member folders and TTA settings."""
    spec = reference_dir() / "default.json"
    if not spec.exists():
        raise OptionError(f"no reference models are shipped in {reference_dir()}; pass --model RUN")
    d = json.loads(spec.read_text(encoding="utf-8"))
    d["paths"] = [reference_dir() / m for m in d["members"]]
    return d
