"""Self-training as one resumable job: a pipeline recipe's generations, trained in order.

`kmnist-fa train --recipe default` runs one: the first generation learns from the
labelled images, each later one also from the unlabelled images its teachers (earlier
generations) label with confidence (`pipelines.teachers`), and the last generation is
the model. Each generation is an ordinary run, which a user can inspect, predict with
or resume; the plan is written first (`runs.pipeline`), so a pipeline killed anywhere
continues with `--resume NAME`: finished generations are kept, an interrupted one
resumes from its last epoch, the rest start.

With `--n-folds K` every fold gets a chain of its own, whose teachers train on that
fold's training images only (`check_teacher` refuses any other), so each generation's
score on the fold's validation images is honest, and the pipeline's cross-validated
score is that of its last generation: the last epoch (recipes keep it) with the run's
own TTA settings.
"""
from __future__ import annotations

import logging
import statistics
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from fastai.torch_core import num_distrib

from ..config.options import SplitSpec
from ..config.recipes import resolve_pipeline
from ..core.errors import OptionError, RunError
from ..data.datasets import MnistData, load_dataset
from ..infer.ensemble import accuracy
from ..infer.predict import load_run, predict_probs, validation_set
from ..runs import RUN_FILE, RunRecord, check_name, models_dir
from ..runs.pipeline import PipelineRecord, Stage, pipeline_file
from .training import resume, train

logger = logging.getLogger("kmnist_fa")


@dataclass
class PipelineResult:
    record: PipelineRecord
    runs: dict[str, RunRecord]  # run name -> its record, in training order


def plan(recipe: str, overrides: dict, name: str, root: str | Path | None = None) -> PipelineRecord:
    """The pipeline `train --recipe RECIPE --name NAME` runs; `--n-folds K` without `--fold` means every fold."""
    _one_process()
    overrides = dict(overrides)
    n_folds, fold = overrides.pop("n_folds", None), overrides.pop("fold", None)
    folds = [fold] if fold is not None or n_folds is None else list(range(n_folds))
    for k in folds:  # the split's own checks (--fold without --n-folds, out of range, with --full), on each fold
        SplitSpec(n_folds=n_folds, fold=k, full=bool(overrides.get("full")))
    rec = PipelineRecord(check_name(name), str(recipe), resolve_pipeline(recipe, overrides), n_folds, folds)
    for s in rec.stages():  # every generation's config builds, and its run's name is valid, before anything starts
        check_name(s.run, "--name")
    return rec


def _one_process() -> None:
    if num_distrib() > 1:  # every rank would write the record; one process runs the chain, each run can use the GPU
        raise OptionError("a self-training pipeline runs in one process: start it without torchrun / accelerate "
                          "launch")


def run_pipeline(rec: PipelineRecord, root: str | Path | None = None, quiet: bool = False,
                 progress: Callable | None = None, data: MnistData | None = None, cbs: list | None = None,
                 log: Callable[[str], None] = logger.info) -> PipelineResult:
    """Start a new pipeline: refused when its record, any of its runs, or a run of its own name already exists
    (`--resume NAME` would then mean two things)."""
    _one_process()
    f = pipeline_file(rec.name, root)
    taken = [s.run for s in rec.stages() if (models_dir(root) / s.run).exists()]
    if (models_dir(root) / rec.name).exists() and rec.name not in taken:
        taken.append(rec.name)
    if f.exists() or taken:
        raise OptionError(f"--name: {'pipeline ' + rec.name if f.exists() else 'run ' + taken[0]} already exists in "
                          f"{models_dir(root)}; pick another name or `--resume {rec.name}` to continue it")
    data = data or _load_data(rec)  # bad --data fails here, before a record would promise a pipeline to resume
    models_dir(root).mkdir(parents=True, exist_ok=True)
    rec.write(root)
    return _execute(rec, root, quiet, progress, data, cbs, log)


def resume_pipeline(name: str, root: str | Path | None = None, quiet: bool = False, progress: Callable | None = None,
                    data: MnistData | None = None, cbs: list | None = None,
                    log: Callable[[str], None] = logger.info) -> PipelineResult:
    """Continue pipeline `name` where it stopped: finished runs are kept, an interrupted one resumes, the rest start."""
    _one_process()
    rec = PipelineRecord.read(name, root)
    if rec.status == "complete":
        raise RunError(f"{pipeline_file(name, root)}: pipeline {name} is already complete; nothing to resume "
                       f"(`kmnist-fa models show {name}` shows it)")
    return _execute(rec, root, quiet, progress, data, cbs, log)


def _load_data(rec: PipelineRecord) -> MnistData:
    first = rec.stages()[0].config.data  # every generation reads the same labelled data
    return load_dataset(first.dataset, first.data)


def _execute(rec: PipelineRecord, root, quiet, progress, data, cbs, log) -> PipelineResult:
    stages = rec.stages()
    data = data or _load_data(rec)
    done: dict[str, RunRecord] = {}
    for st in stages:
        where = f"fold {st.fold}, " if st.fold is not None else ""
        log(f"pipeline {rec.name}: {where}generation {st.generation.name} ({st.index} of {len(rec.generations)}) "
            f"-> run {st.run}")
        run = _stage(st, rec, root, quiet, progress, data, cbs, log)
        done[st.run] = run
        rec.results[st.run] = _scores(run, data)
        rec.write(root)
    rec.cv = cross_validation(rec) if rec.n_folds else None
    rec.status = "complete"
    rec.write(root)
    return PipelineResult(rec, done)


def _stage(st: Stage, rec: PipelineRecord, root, quiet, progress, data, cbs, log) -> RunRecord:
    """Train, resume or keep one generation's run."""
    path = models_dir(root) / st.run
    if (path / RUN_FILE).exists():
        have = RunRecord.read(path)
        if have.config.flat() != st.config.flat():
            changed = sorted(k for k, v in st.config.flat().items() if have.config.get(k) != v)
            raise RunError(f"{path}: a run with other options ({', '.join(changed[:4])}) than generation "
                           f"{st.generation.name} of pipeline {rec.name}; move it away or pick another --name")
        if have.complete:
            log(f"run {st.run}: already complete; kept")
            return have
        return resume(path, root, quiet=quiet, progress=progress, data=data, cbs=cbs, log=log).record
    return train(st.config, st.run, root, quiet=quiet, progress=progress, data=data, cbs=cbs, log=log).record


def _scores(run: RunRecord, data: MnistData) -> dict:
    """What the pipeline record keeps of a run, so listing a pipeline never loads a model: its time and
    pseudo-labels, and with a validation split its kept epoch's accuracy, plain and with its own TTA settings."""
    p = run.extra.get("pseudo")
    out = {"epochs": run.epochs_done, "wall_time_s": round(run.wall_time_s, 1),
           "pseudo_images": p.get("images") if isinstance(p, dict) else None, "valid_acc": None, "valid_acc_tta": None}
    if run.split.n_valid and run.best is not None:
        out["valid_acc"] = run.best.accuracy
        loaded = load_run(run.path)
        if loaded.tta.on:
            x, y, _ = validation_set(loaded, data)
            out["valid_acc_tta"] = accuracy(predict_probs(loaded, x, tta=True, n=loaded.tta.n), y)
    return out


def cross_validation(rec: PipelineRecord) -> dict:
    """Per generation: its folds' scores (plain and with TTA), their mean and sample standard deviation, and the
    training time summed over folds; `score` is the last generation's, with TTA when it predicts with it."""
    out = {}
    for g in rec.generations:
        runs = [s.run for s in rec.stages() if s.generation.name == g.name]
        r = [rec.results.get(n, {}) for n in runs]
        row = {"runs": runs, "minutes": round(sum(x.get("wall_time_s") or 0 for x in r) / 60, 2)}
        for k in ("valid_acc", "valid_acc_tta"):
            xs = [x.get(k) for x in r]
            if xs and all(isinstance(v, (int, float)) for v in xs):
                row[k] = xs
                row[f"{k}_mean"] = statistics.mean(xs)
                row[f"{k}_sd"] = statistics.stdev(xs) if len(xs) > 1 else 0.0
        out[g.name] = row
    last = out[rec.last.name]
    key = "valid_acc_tta" if "valid_acc_tta_mean" in last else "valid_acc"
    out["score"] = {"generation": rec.last.name, "with": "tta" if key.endswith("tta") else "plain",
                    "mean": last.get(f"{key}_mean"), "sd": last.get(f"{key}_sd"), "folds": len(rec.folds)}
    return out

