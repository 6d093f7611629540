"""Hyperparameter sweeps: line search (the report's method) or grid, over k folds, resumable.

Each config x fold is an ordinary run in `models/<sweep>/<config>-f<k>/`, so
`interpret`, `evaluate` and `ensemble` work on sweep members. Re-running the same
sweep skips finished runs and resumes interrupted ones from their last epoch.
Several runs can train at once (`jobs`), one process each with its own share of
the CPU threads, or its own GPU when there are several.
"""
from __future__ import annotations

import itertools
import json
import os
import statistics
from dataclasses import dataclass
from pathlib import Path

from . import runs
from .atomic import write_csv, write_json, write_text
from .config import OPTIONS, SWEEPABLE, TrainConfig, recipe_values
from .errors import KmnistError, OptionError

MODES = ("line", "grid")


def parse_param(spec: str) -> tuple[str, list]:
    """'lr=1e-3,3e-3' -> ('lr', [0.001, 0.003]), typed and checked like the option itself."""
    if "=" not in spec:
        raise OptionError(f"--param {spec!r}: expected NAME=V1,V2,... (e.g. lr=1e-3,3e-3)")
    name, vals = spec.split("=", 1)
    name = name.strip().replace("-", "_")
    if name not in SWEEPABLE:
        raise OptionError(f"--param {name[:40]}: not sweepable (choose from {', '.join(SWEEPABLE)})")
    texts = [v.strip() for v in vals.split(",")]
    if not texts or any(v == "" for v in texts):
        raise OptionError(f"--param {name}: no values")
    return name, [OPTIONS[name].parse(v) for v in texts]


def expand(base: TrainConfig, params: list[tuple[str, list]], mode: str = "line") -> list[dict]:
    """The configs to train, as dicts of the swept values (validated by building each TrainConfig)."""
    if mode not in MODES:
        raise OptionError(f"--mode must be one of {', '.join(MODES)}, got {mode!r}")
    names = [n for n, _ in params]
    if len(set(names)) != len(names):
        raise OptionError("--param: each parameter may be given once")
    base_vals = {n: base.get(n) for n in names}
    if mode == "grid":
        combos = [dict(zip(names, vs)) for vs in itertools.product(*(v for _, v in params))]
    else:  # one parameter at a time, the others at the base value
        combos = [{**base_vals, n: v} for n, vs in params for v in vs]
    seen, out = set(), []
    for c in combos:
        key = tuple(sorted(c.items()))
        if key not in seen:
            seen.add(key)
            base.replace(**c)
            out.append(c)
    return out


def config_id(values: dict) -> str:
    return "_".join(f"{k}-{v}" for k, v in values.items()).replace("/", "-")


@dataclass
class Job:
    config: dict  # swept values
    fold: int | None
    name: str  # run folder name inside the sweep


def plan(base: TrainConfig, params, mode: str, n_folds: int | None, folds: str | None) -> list[Job]:
    configs = expand(base, params, mode)
    if n_folds:
        if folds in (None, "all"):
            fold_list = list(range(n_folds))
        else:
            try:
                fold_list = sorted({int(f) for f in folds.split(",")})
            except ValueError:
                raise OptionError(f"--folds must be 'all' or a list like 0,1; got {folds!r}") from None
            if any(not 0 <= f < n_folds for f in fold_list):
                raise OptionError(f"--folds must be within 0..{n_folds - 1}, got {folds!r}")
    elif folds is not None:
        raise OptionError("--folds needs --n-folds")
    else:
        fold_list = [None]
    return [Job(c, f, f"{config_id(c)}-{'holdout' if f is None else f'f{f}'}") for c in configs for f in fold_list]


def _status(path: Path) -> str:
    """complete, resumable, new, or 'unreadable: why' for a member folder."""
    if not (path / runs.RUN_FILE).exists():
        leftovers = path.exists() and any(not p.name.endswith(".tmp") for p in path.iterdir())
        return "unreadable: a folder without run.json is in the way" if leftovers else "new"
    try:
        rec = runs.RunRecord.read(path)
    except KmnistError as e:
        return f"unreadable: {e}"
    return "complete" if rec.complete else "resumable"


def run_job(base: dict, job_config: dict, fold, n_folds, name: str, root: str, threads: int | None,
            gpu: int | None) -> str:
    """Train or resume one sweep member (in this process or a worker).

    A member whose folder cannot be read is reported and left as it is: it may hold
    hours of training that a fix to its run.json would recover.
    """
    if gpu is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = str(gpu)
    import torch

    if threads:
        torch.set_num_threads(threads)
    from .learner import resume, train

    path = Path(root) / name
    status = _status(path)
    if status == "complete":
        return "skipped"
    if status.startswith("unreadable"):
        return status
    if status == "resumable":
        resume(path, quiet=True)
        return "resumed"
    base_cfg = TrainConfig.from_dict(base)
    cfg = base_cfg.replace(**job_config, n_folds=n_folds, fold=fold, full=False)
    cfg.extra["sweep"] = Path(root).name
    train(cfg, name=name, root=root, quiet=True)
    return "trained"


def run_sweep(base: TrainConfig, jobs_list: list[Job], root: Path, jobs: int = 1,
              threads: int | None = None) -> dict[str, str]:
    """Run every job (skipping finished ones); returns name -> trained/resumed/skipped/unreadable: .../failed: ..."""
    root.mkdir(parents=True, exist_ok=True)
    base_d = base.to_dict()
    write_json(root / "sweep.json", {"base": base_d, "jobs": [j.__dict__ for j in jobs_list]})
    outcome: dict[str, str] = {}
    import torch

    n_gpu = torch.cuda.device_count() if not base.cpu else 0
    if jobs <= 1:
        for j in jobs_list:
            outcome[j.name] = run_job(base_d, j.config, j.fold, base.split.n_folds, j.name, str(root), threads, None)
        return outcome
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor, as_completed

    with ProcessPoolExecutor(jobs, mp_context=mp.get_context("spawn")) as pool:
        futs = {pool.submit(run_job, base_d, j.config, j.fold, base.split.n_folds, j.name, str(root),
                            threads or max(1, (os.cpu_count() or 1) // jobs),
                            (i % n_gpu) if n_gpu > 1 else None): j.name for i, j in enumerate(jobs_list)}
        for f in as_completed(futs):
            try:
                outcome[futs[f]] = f.result()
            except Exception as e:
                outcome[futs[f]] = f"failed: {type(e).__name__}: {e}"
    return outcome


def progress_of(root: Path, jobs_list: list[Job]) -> dict[str, tuple[int, int]]:
    """(epochs done, total) per member, read from the members' run.json (works across processes)."""
    out = {}
    for j in jobs_list:
        try:
            rec = runs.RunRecord.read(root / j.name)
            out[j.name] = (rec.epochs_done, rec.total_epochs)
        except KmnistError:
            out[j.name] = (0, 0)
    return out


def results(root: Path, jobs_list: list[Job]) -> list[dict]:
    """One row per config: folds done, valid accuracy mean and sd, loss, wall time; best first."""
    rows = []
    for cid, group in itertools.groupby(jobs_list, key=lambda j: config_id(j.config)):
        group = list(group)
        accs, losses, times = [], [], []
        for j in group:
            p = root / j.name
            if _status(p) != "complete":
                continue
            rec = runs.RunRecord.read(p)
            if rec.best and rec.best.accuracy is not None:
                accs.append(rec.best.accuracy)
                losses.append(rec.best.valid_loss)
            times.append(rec.wall_time_s)
        rows.append({"config": cid, **group[0].config, "folds_done": len(accs), "folds": len(group),
                     "acc_mean": statistics.mean(accs) if accs else None,
                     "acc_sd": statistics.stdev(accs) if len(accs) > 1 else 0.0 if accs else None,
                     "loss_mean": statistics.mean(losses) if losses else None,
                     "time_s": round(sum(times), 1), "fold_accs": accs})
    rows.sort(key=lambda r: (r["acc_mean"] is None, -(r["acc_mean"] or 0)))
    return rows


def write_results(root: Path, rows: list[dict], params: list[tuple[str, list]], base: TrainConfig) -> Path:
    cols = ["config", *[n for n, _ in params], "folds_done", "folds", "acc_mean", "acc_sd", "loss_mean", "time_s"]
    write_csv(root / "results.csv", rows, cols)
    return plot(root / "sweep.png", rows, params, base)


def plot(path: Path, rows: list[dict], params, base: TrainConfig) -> Path:
    """Valid accuracy against each swept parameter, error bars = sd over folds (others at base)."""
    from .plots import plt, save_fig

    fig, axes = plt.subplots(1, len(params), figsize=(4 * len(params), 3.2), squeeze=False)
    for ax, (name, values) in zip(axes[0], params):
        xs, ys, es = [], [], []
        for v in values:
            match = [r for r in rows if r[name] == v and r["acc_mean"] is not None
                     and all(r[o] == base.get(o) for o, _ in params if o != name)]
            pool = [a for r in match for a in r["fold_accs"]] or \
                   [a for r in rows if r[name] == v for a in r["fold_accs"]]  # grid: marginal over the others
            if pool:
                xs.append(v)
                ys.append(statistics.mean(pool))
                es.append(statistics.stdev(pool) if len(pool) > 1 else 0.0)
        numeric = all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in xs)
        pos = xs if numeric else list(range(len(xs)))
        ax.errorbar(pos, ys, yerr=es, marker="o", capsize=3)
        if numeric and len(xs) > 1 and min(xs) > 0 and max(xs) / min(xs) >= 10:
            ax.set_xscale("log")
        if not numeric:
            ax.set_xticks(pos, [str(x) for x in xs])
        ax.set(xlabel=name, ylabel="valid accuracy", title=f"accuracy vs {name}")
    fig.tight_layout()
    return save_fig(fig, path)


def best_recipe(rows: list[dict], base: TrainConfig, path: Path) -> Path | None:
    """The best config as a recipe file for `kmnist-fa train --recipe PATH`."""
    if not rows or rows[0]["acc_mean"] is None:
        return None
    best = rows[0]
    cfg = base.replace(**{k: best[k] for k in best if k in SWEEPABLE})
    about = f"best of sweep {path.parent.name}: {best['config']} ({best['acc_mean']:.4f} over {best['folds_done']} folds)"
    lines = [f"description = {json.dumps(about)}"]
    for k, v in recipe_values(cfg).items():
        lines.append(f"{k} = " + (json.dumps(v) if isinstance(v, str) else str(v).lower() if isinstance(v, bool) else repr(v)))
    return write_text(path, "\n".join(lines) + "\n")


def describe(outcome: dict[str, str]) -> str:
    counts = {}
    for v in outcome.values():
        k = v.split(":")[0]
        counts[k] = counts.get(k, 0) + 1
    return ", ".join(f"{n} {k}" for k, n in sorted(counts.items()))
