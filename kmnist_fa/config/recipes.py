"""Named training recipes: one small TOML file each in `kmnist_fa/recipes/`.

A recipe is a partial `TrainConfig` (flat option names, `config.options.RECIPE_KEYS`) plus a
description. `report-*` recipes
reproduce the rows of the report's results table; `default-<arch>` is what
`kmnist-fa train ARCH` uses, chosen by cross-validation (see docs/experiments/reference-models.md).
Precedence: TrainConfig defaults < recipe < options given on the command line.

A recipe with `[[generations]]` tables is a self-training pipeline (`default` is one):
each generation is a run of the recipe's options plus its own, and names the earlier
generations whose predictions label the unlabelled images (`pseudo`) or whose soft
targets it distils (`teacher`); the last generation is the model the pipeline ships.
`pipelines.selftrain` runs them in order as one resumable job.
"""
from __future__ import annotations

import re
import sys
from dataclasses import dataclass
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
    unknown = set(rec) - set(RECIPE_KEYS) - {"description", "generations"}
    if unknown:
        raise OptionError(f"--recipe: {p} has unknown keys: {', '.join(sorted(unknown))}")
    if not isinstance(rec.get("description", ""), str):
        raise OptionError(f"--recipe: {p}: description must be a string")
    for k, v in rec.items():
        if k not in ("description", "generations"):
            rec[k] = OPTIONS[k].check(v, f"--recipe {p.name}: {k}")
    if "generations" in rec:
        rec["generations"] = [g.to_json() for g in check_generations(rec["generations"], f"--recipe {p.name}")]
    return rec


GENERATION_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,39}$")
FOLD_KEYS = ("n_folds", "fold")  # a pipeline runs every fold (or the one asked for) from one plan
MAX_GENERATIONS = 20
_REFS = ("pseudo", "teacher")


@dataclass(frozen=True)
class Generation:
    """One generation of a self-training pipeline: its own options over the recipe's, and the earlier
    generations whose predictions label the unlabelled images (`pseudo`) or whose soft targets it distils
    (`teacher`)."""

    name: str
    options: dict
    pseudo: tuple[str, ...] = ()
    teacher: tuple[str, ...] = ()

    def to_json(self) -> dict:
        return {"name": self.name, **self.options, **{k: list(getattr(self, k)) for k in _REFS if getattr(self, k)}}


def check_generations(gens, where: str, keys=RECIPE_KEYS) -> list[Generation]:
    """A pipeline's `[[generations]]` (from a recipe, or a pipeline record read back, whose generations also hold
    the command line's options: `keys`), checked: names, option values, and teachers that are earlier
    generations."""
    if not isinstance(gens, list) or not gens or len(gens) > MAX_GENERATIONS:
        raise OptionError(f"{where}: generations must be a list of 1 to {MAX_GENERATIONS} tables")
    out: list[Generation] = []
    for i, g in enumerate(gens, 1):
        if not isinstance(g, dict):
            raise OptionError(f"{where}: generation {i} must be a table")
        name = g.get("name", f"g{i}")
        if not isinstance(name, str) or not GENERATION_RE.match(name):
            raise OptionError(f"{where}: generation {i}: name must be 1-40 letters, digits, '_' or '-', "
                              f"got {str(name)[:60]!r}")
        if name in {o.name for o in out}:
            raise OptionError(f"{where}: generation name {name!r} is used twice")
        unknown = set(g) - set(keys) - {"name", *_REFS}
        if unknown:
            raise OptionError(f"{where}: generation {name} has unknown keys: {', '.join(sorted(unknown))}")
        refs = {}
        for k in _REFS:
            v = g.get(k, [])
            if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
                raise OptionError(f"{where}: generation {name}: {k} must be a list of earlier generations' names")
            late = [x for x in v if x not in {o.name for o in out}]
            if late:
                raise OptionError(f"{where}: generation {name}: {k} names {late[0][:40]!r}, which is not an "
                                  "earlier generation")
            refs[k] = tuple(dict.fromkeys(v))
        folds = sorted(set(g) & set(FOLD_KEYS))
        if folds:
            raise OptionError(f"{where}: generation {name} sets {folds[0]}; a pipeline's folds come from the "
                              "command line (--n-folds, --fold)")
        opts = {k: OPTIONS[k].check(v, f"{where}: generation {name}: {k}") for k, v in g.items()
                if k not in ("name", *_REFS)}
        out.append(Generation(name, opts, **refs))
    return out


def is_pipeline(recipe: str | None) -> bool:
    """Whether `train --recipe` hands this recipe to the pipeline runner rather than training one run."""
    return recipe is not None and "generations" in load_recipe(recipe)


def resolve_pipeline(recipe: str, overrides: dict) -> list[Generation]:
    """Each generation's options: TrainConfig defaults < recipe < generation < options given on the command line
    (which apply to every generation: `--epochs 1` shortens them all). Every generation's config is built here,
    so a bad value fails before anything trains."""
    rec = load_recipe(recipe)
    given = {k: v for k, v in overrides.items() if v is not None}
    if any(k in rec for k in FOLD_KEYS):
        raise OptionError(f"--recipe {recipe}: a pipeline's folds come from the command line (--n-folds, --fold), "
                          "not its recipe")
    for k in ("pseudo", "teacher"):
        if k in given:
            raise OptionError(f"{OPTIONS[k].flag}: --recipe {recipe} is a self-training pipeline whose generations "
                              "name their own teachers; drop the option")
    base = {k: v for k, v in rec.items() if k not in ("description", "generations")}
    out, splits = [], set()
    for g in check_generations(rec["generations"], f"--recipe {recipe}"):
        opts = {**base, **g.options, **given}
        # built as the pipeline will build it: teachers named, unlabelled images only where something labels them
        check = {**opts, "pseudo": ",".join(g.pseudo) or None, "teacher": ",".join(g.teacher) or None}
        if not g.pseudo:
            check.pop("unlabelled", None)
        splits.add(TrainConfig.build(**check).split)
        out.append(Generation(g.name, opts, g.pseudo, g.teacher))
    if len(splits) > 1:  # a teacher must share its student's split, or it saw the images the student validates on
        raise OptionError(f"--recipe {recipe}: its generations set different splits (seed, valid_pct, full); "
                          "a pipeline's generations share one")
    return out


def default_recipe_name(arch: str) -> str | None:
    name = f"default-{arch}"
    return name if (RECIPE_DIR / f"{name}.toml").exists() else None


def resolve_config(arch: str | None, recipe: str | None, overrides: dict) -> tuple[TrainConfig, str | None]:
    """TrainConfig from (arch's default) recipe plus the options given explicitly (non-None)."""
    recipe = recipe or (default_recipe_name(arch) if arch else None)
    values = {k: v for k, v in load_recipe(recipe).items() if k != "description"} if recipe else {}
    if "generations" in values:
        raise OptionError(f"--recipe {recipe} is a self-training pipeline (generations of runs): `kmnist-fa train "
                          f"--recipe {recipe}` runs it; other commands take a single run's recipe")
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
