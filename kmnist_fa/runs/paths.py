"""Where runs live: the models folder, run names, file names, and the reference runs shipped in the package.

A run is a folder `models/<name>/` (model.pth, run.json, history.csv, curves.png);
`reference/NAME` names a run shipped inside the package, so a wheel install has them.
"""
from __future__ import annotations

import json
import os
import re
from datetime import datetime
from pathlib import Path

from ..config.options import TtaSettings
from ..core.errors import OptionError, RunError

MODEL_FILE, RUN_FILE, CKPT_FILE, HISTORY_FILE, CURVES_FILE = (
    "model.pth", "run.json", "checkpoint.pth", "history.csv", "curves.png")
HUB_CONFIG, HUB_WEIGHTS = "config.json", "model.safetensors"  # `kmnist-fa export --format hub` folders
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,199}$")


def models_dir(path: str | Path | None = None) -> Path:
    """Where runs live: `--models-dir` > env `KMNIST_FA_MODELS` > ./models."""
    return Path(path or os.environ.get("KMNIST_FA_MODELS") or "models")


def check_name(name: str, label: str = "--name") -> str:
    if not NAME_RE.match(name):
        raise OptionError(f"{label}: {name[:80]!r} is not a valid run name (letters, digits, '.', '_', '-'; "
                          "no slashes; at most 200 characters)")
    return name


def default_name(arch: str) -> str:
    return f"{arch}-{datetime.now():%Y%m%d-%H%M%S}"


def run_path(name_or_path: str | Path, root: str | Path | None = None) -> Path:
    """A run folder from a path, a name in the models dir, or `reference/NAME` for a shipped run."""
    p = Path(name_or_path)
    if p.is_dir() and ((p / RUN_FILE).exists() or is_hub_folder(p)):
        return p
    q = models_dir(root) / str(name_or_path)
    if q.is_dir():
        return q
    name = str(name_or_path)
    if name.startswith(REFERENCE_PREFIX) and NAME_RE.match(name[len(REFERENCE_PREFIX):]):
        r = reference_dir() / name[len(REFERENCE_PREFIX):]
        if (r / RUN_FILE).exists():
            return r
    raise RunError(f"{name_or_path}: no such run (looked in {p} and {q}); `kmnist-fa models` lists runs")


def is_hub_folder(path: Path) -> bool:
    return not (path / RUN_FILE).exists() and (path / HUB_CONFIG).is_file() and (path / HUB_WEIGHTS).is_file()


REFERENCE_PREFIX = "reference/"


def reference_dir() -> Path:
    """The reference runs shipped inside the package (so a wheel install has them too)."""
    return Path(__file__).resolve().parents[1] / "reference"


def reference_runs() -> list[Path]:
    return sorted(p for p in reference_dir().iterdir() if (p / RUN_FILE).exists())


def reference_default() -> dict:
    """The shipped default ensemble (reference/default.json): member folders (`paths`) and `tta`, its
    `TtaSettings`."""
    spec = reference_dir() / "default.json"
    if not spec.exists():
        raise OptionError(f"no reference models are shipped in {reference_dir()}; pass --model RUN")
    d = json.loads(spec.read_text(encoding="utf-8"))
    return {**d, "paths": [reference_dir() / m for m in d["members"]], "tta": TtaSettings.from_json(d, str(spec))}
