"""A self-training pipeline's record, `models/NAME.pipeline.json`: its plan, and what each of its runs scored.

A pipeline is several runs (one per generation, per fold with `--n-folds`), so its plan
cannot live in any one of them: it is written before the first run starts, which is what
lets `kmnist-fa train --resume NAME` continue a pipeline killed at any point, even
before its first run saved anything. Everything else about a generation is in its own
run folder. The record is read like run.json, as untrusted input: bounded in size,
every field checked, each generation's options through the same checks as a recipe's.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from ..config.options import OPTIONS, TrainConfig
from ..config.recipes import Generation, check_generations
from ..core.atomic import write_json
from ..core.errors import OptionError, RunError
from .paths import NAME_RE, check_name, models_dir
from .record import read_json

SUFFIX = ".pipeline.json"
FORMAT_VERSION = 1
MAX_BYTES = 1 << 20


def pipeline_file(name: str, root: str | Path | None = None) -> Path:
    """Beside the runs, not in one of them: a k-fold pipeline has no run of its own name."""
    return models_dir(root) / f"{name}{SUFFIX}"


def stage_name(name: str, generation: str, fold: int | None, last: bool) -> str:
    """The run a generation trains: the last one is the pipeline's model (`NAME`, or `NAME.fK` for fold K),
    the earlier ones its teachers (`NAME.g1`, `NAME.fK.g1`)."""
    base = name if fold is None else f"{name}.f{fold}"
    return base if last else f"{base}.{generation}"


@dataclass
class Stage:
    """One run of the plan: generation `index` (from 1) of fold `fold` (None: not a k-fold pipeline)."""

    run: str
    generation: Generation
    index: int
    fold: int | None
    config: TrainConfig


@dataclass
class PipelineRecord:
    """The plan (recipe, generations with their resolved options, folds) and the results so far."""

    name: str
    recipe: str
    generations: list[Generation]
    n_folds: int | None = None
    folds: list[int | None] = field(default_factory=lambda: [None])
    created: str = field(default_factory=lambda: datetime.now().isoformat(timespec="seconds"))
    status: str = "running"
    results: dict[str, dict] = field(default_factory=dict)  # run name -> its scores (`pipelines.selftrain`)
    cv: dict | None = None
    updated: str | None = None

    @property
    def last(self) -> Generation:
        return self.generations[-1]

    def stages(self) -> list[Stage]:
        """Every run in training order: fold by fold, each fold's generations in order."""
        out = []
        for fold in self.folds:
            names = {g.name: stage_name(self.name, g.name, fold, g is self.last) for g in self.generations}
            for i, g in enumerate(self.generations, 1):
                opts = {k: v for k, v in g.options.items() if k not in ("n_folds", "fold", "pseudo", "teacher")}
                if not g.pseudo:  # only self-training reads the unlabelled images
                    opts.pop("unlabelled", None)
                split = {"n_folds": self.n_folds, "fold": fold} if self.n_folds else {}
                cfg = TrainConfig.build(
                    extra={"recipe": self.recipe, "pipeline": {"name": self.name, "generation": g.name, "index": i,
                                                               "of": len(self.generations), "fold": fold}},
                    **opts, **split, pseudo=",".join(names[t] for t in g.pseudo) or None,
                    teacher=",".join(names[t] for t in g.teacher) or None)
                out.append(Stage(names[g.name], g, i, fold, cfg))
        return out

    def to_json(self) -> dict:
        return {"format_version": FORMAT_VERSION, "name": self.name, "recipe": self.recipe,
                "n_folds": self.n_folds, "folds": self.folds, "generations": [g.to_json() for g in self.generations],
                "created": self.created, "updated": self.updated, "status": self.status, "results": self.results,
                "cv": self.cv}

    def write(self, root: str | Path | None = None) -> Path:
        self.updated = datetime.now().isoformat(timespec="seconds")
        return write_json(pipeline_file(self.name, root), self.to_json())

    @classmethod
    def read(cls, name: str, root: str | Path | None = None) -> PipelineRecord:
        """The record of pipeline `name`; a missing, oversized or invalid one is a RunError naming the file."""
        f = pipeline_file(name, root)
        d = read_json(f, MAX_BYTES, f"missing (no pipeline named {name})")
        try:
            rec = cls._from_json(d)
        except OptionError as e:
            raise RunError(f"{f}: {e}") from None
        if rec.name != name:  # a copied or renamed record would train and rewrite another pipeline's runs
            raise RunError(f"{f}: records pipeline {rec.name[:80]!r}, not {name!r}; it was copied or renamed")
        return rec

    @classmethod
    def _from_json(cls, d) -> PipelineRecord:
        if not isinstance(d, dict):
            raise OptionError("expected a table")
        v = d.get("format_version")
        if v != FORMAT_VERSION:
            raise OptionError(f"format_version must be {FORMAT_VERSION} (a newer kmnist-fa may have written it), "
                              f"got {str(v)[:20]}")
        for k, t in (("name", str), ("recipe", str), ("created", str), ("status", str), ("results", dict),
                     ("folds", list)):
            if not isinstance(d.get(k), t):
                raise OptionError(f"{k} must be a {t.__name__}")
        check_name(d["name"], "name")
        n = d.get("n_folds")
        if n is not None and (isinstance(n, bool) or not isinstance(n, int) or not 2 <= n <= 1000):
            raise OptionError("n_folds must be a whole number from 2 to 1000, or null")
        folds = d["folds"]
        ok = folds == [None] if n is None else (
            0 < len(folds) <= n and len(set(map(str, folds))) == len(folds)
            and all(isinstance(k, int) and not isinstance(k, bool) and 0 <= k < n for k in folds))
        if not ok:
            raise OptionError("folds must be [null] without n_folds, else fold numbers below n_folds")
        if d["status"] not in ("running", "complete"):
            raise OptionError("status must be running or complete")
        if d.get("cv") is not None and not isinstance(d["cv"], dict):
            raise OptionError("cv must be a table or null")
        if not all(isinstance(v, dict) for v in d["results"].values()):
            raise OptionError("results must map run names to tables")
        rec = cls(name=d["name"], recipe=d["recipe"][:4096], generations=check_generations(d.get("generations"),
                  "generations", OPTIONS), n_folds=n, folds=folds, created=d["created"][:40], status=d["status"],
                  results=d["results"], cv=d.get("cv"),
                  updated=d["updated"][:40] if isinstance(d.get("updated"), str) else None)
        try:
            rec.stages()  # every generation's options build a config, or this is one line
        except TypeError as e:
            raise OptionError(f"generations: {e}") from None
        return rec


def pipeline_of(config: TrainConfig) -> dict | None:
    """The pipeline a run is a generation of (name, generation, index, of, fold), as its config records it; a name
    that is not a run name is no pipeline (run.json is untrusted, and the name becomes a file path)."""
    p = config.extra.get("pipeline")
    return p if isinstance(p, dict) and isinstance(p.get("name"), str) and NAME_RE.match(p["name"]) else None
