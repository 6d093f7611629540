"""Named training recipes: one small TOML file each in `kmnist_fa/recipes/`.

A recipe is a partial `TrainConfig` (flat option names, `config.options.RECIPE_KEYS`) plus a
description. `report-*` recipes
reproduce the rows of the report's results table; `default-<arch>` is what
`kmnist-fa train ARCH` uses, chosen by cross-validation (see docs/experiments/reference-models.md).
Precedence: TrainConfig defaults < recipe < options given on the command line.
"""
from __future__ import annotations

import sys
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

from ..core.errors import KmnistError, OptionError
from ..core.files import open_regular
from .options import OPTIONS, RECIPE_KEYS, TrainConfig

RECIPE_DIR = Path(__file__).resolve().parents[1] / "recipes"  # package data: kmnist_fa/recipes/*.toml


def list_recipes() -> dict[str, dict]:
    return {p.stem: load_recipe(p) for p in sorted(RECIPE_DIR.glob("*.toml"))}


def load_recipe(name_or_path: str | Path) -> dict:
    """A recipe by name (built-in) or by path to a TOML file of your own."""
    p = Path(name_or_path)
    if not p.suffix == ".toml":
        p = RECIPE_DIR / f"{name_or_path}.toml"
        if not p.exists():
            known = ", ".join(sorted(q.stem for q in RECIPE_DIR.glob("*.toml")))
            raise OptionError(f"--recipe: unknown recipe {name_or_path!r} (known: {known}; or a path to a .toml file)")
    try:
        with open_regular(p, "rb") as f:
            rec = tomllib.load(f)
    except FileNotFoundError:
        raise OptionError(f"--recipe: {p} not found") from None
    except OSError as e:
        raise OptionError(f"--recipe: {p}: cannot read ({e.strerror or type(e).__name__})") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise OptionError(f"--recipe: {p} is not valid TOML ({e})") from None
    unknown = set(rec) - set(RECIPE_KEYS) - {"description"}
    if unknown:
        raise OptionError(f"--recipe: {p} has unknown keys: {', '.join(sorted(unknown))}")
    if not isinstance(rec.get("description", ""), str):
        raise OptionError(f"--recipe: {p}: description must be a string")
    for k, v in rec.items():
        if k != "description":
            rec[k] = OPTIONS[k].check(v, f"--recipe {p.name}: {k}")
    return rec


def default_recipe_name(arch: str) -> str | None:
    name = f"default-{arch}"
    return name if (RECIPE_DIR / f"{name}.toml").exists() else None


def resolve_config(arch: str | None, recipe: str | None, overrides: dict) -> tuple[TrainConfig, str | None]:
    """TrainConfig from (arch's default) recipe plus the options given explicitly (non-None)."""
    recipe = recipe or (default_recipe_name(arch) if arch else None)
    values = {k: v for k, v in load_recipe(recipe).items() if k != "description"} if recipe else {}
    if arch and values.get("arch", arch) != arch:
        raise OptionError(f"--recipe {recipe} is for {values['arch']}, not {arch}; drop ARCH or pick another recipe")
    if arch:
        values["arch"] = arch
    if "arch" not in values:
        raise OptionError("ARCH is required (see `kmnist-fa archs`), or a --recipe that names one")
    values.update({k: v for k, v in overrides.items() if v is not None})
    return TrainConfig.build(extra={"recipe": recipe}, **values), recipe


def lr_source(cfg: TrainConfig) -> str:
    """Where a config's fixed learning rate came from, as run.json and model cards name it: its recipe when the
    recipe sets that value, else the option (typed, or chosen by a sweep or tune)."""
    recipe = cfg.extra.get("recipe")
    if recipe:
        try:
            if load_recipe(recipe).get("lr") == cfg.optim.lr:
                return f"recipe {recipe}"
        except KmnistError:  # a recipe file moved or changed since
            pass
    return "--lr"
