"""Hyperparameter sweeps: line search (the report's method) or grid, over k folds, resumable.

Each config x fold is an ordinary run in `models/<sweep>/<config>-f<k>/`, so
`interpret`, `evaluate` and `ensemble` work on sweep members. Re-running the same
sweep skips finished runs and resumes interrupted ones from their last epoch.
Several runs can train at once (`jobs`), one process each with its own share of
the CPU threads, or its own GPU when there are several.
"""
from __future__ import annotations

import itertools
import statistics
from dataclasses import dataclass
from pathlib import Path

from .. import runs
from ..config.options import SWEEPABLE, TrainConfig
from ..core.atomic import write_csv, write_json
from ..core.errors import KmnistError, OptionError
from . import search
from .search import config_id, member_name, member_status

MODES = ("line", "grid")


def parse_param(spec: str) -> tuple[str, list]:
    """'lr=1e-3,3e-3' -> ('lr', [0.001, 0.003]), typed and checked like the option itself."""
    p = search.parse_param(spec, ranges=False)
    return p.name, list(p.choices)


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


@dataclass
class Job:
    config: dict  # swept values
    fold: int | None
    name: str  # run folder name inside the sweep


def plan(base: TrainConfig, params, mode: str, n_folds: int | None, folds: str | None) -> list[Job]:
    configs = expand(base, params, mode)
    return [Job(c, f, member_name(config_id(c), f)) for c in configs for f in search.fold_list(n_folds, folds)]


def run_sweep(base: TrainConfig, jobs_list: list[Job], root: Path, jobs: int = 1,
              threads: int | None = None, track: list[str] | None = None) -> dict[str, str]:
    """Run every job (skipping finished ones); returns name -> trained/resumed/skipped/unreadable: .../failed: ...

    Each config is an enqueued trial of an Optuna study in `root` (see `search`), so
    sweeps and `tune` share storage, workers, resume and crash recovery. A config is
    queued again when one of its runs is missing or unfinished, as a folder-by-folder
    engine would; a member that cannot be read is reported and left as it is: it may
    hold hours of training that a fix to its run.json would recover.
    """
    from optuna.trial import TrialState

    root.mkdir(parents=True, exist_ok=True)
    base_d = base.to_dict()
    write_json(root / "sweep.json", {"base": base_d, "jobs": [j.__dict__ for j in jobs_list]})
    configs = list({config_id(j.config): j.config for j in jobs_list}.values())
    names = list(dict.fromkeys(n for c in configs for n in c))
    spec = search.StudySpec(
        root=str(root), study="sweep", base=base_d, kind="sweep",
        params=[search.Param(n, choices=tuple(dict.fromkeys(c[n] for c in configs))) for n in names],
        folds=list(dict.fromkeys(j.fold for j in jobs_list)), sampler="random",
        identity={"kind": "sweep", "base": base_d}, track=list(track or []))
    if "mlflow" in spec.track:
        from ..train.tracking import parent_run  # start-up speed: options are checked before torch loads

        spec.tracking_parent = parent_run(root.name, "sweep", {"params": ", ".join(names)})
    study = search.open_study(spec)
    live = {config_id(t.params) for t in study.get_trials(deepcopy=False, states=(TrialState.WAITING,
                                                                                    TrialState.RUNNING))}
    done = {config_id(t.params) for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))}
    for c in configs:
        cid = config_id(c)
        members = [member_status(root / member_name(cid, f)) for f in spec.folds]
        if cid not in live and (cid not in done or any(m in ("new", "resumable") for m in members)):
            study.enqueue_trial(c, user_attrs={"config": cid})
    touched = search.run_workers(spec, jobs, threads)
    outcome = {}
    for j in jobs_list:
        status = member_status(root / j.name)
        outcome[j.name] = touched.get(j.name) or ("skipped" if status == "complete" else status)
    outcome.update({k: v for k, v in touched.items() if k.startswith("worker ")})
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
            if member_status(p) != "complete":
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
    from ..core.plots import plt, save_fig  # start-up speed, as in run_sweep

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
    return search.write_recipe(path, cfg, about)


def describe(outcome: dict[str, str]) -> str:
    counts = {}
    for v in outcome.values():
        k = v.split(":")[0]
        counts[k] = counts.get(k, 0) + 1
    return ", ".join(f"{n} {k}" for k, n in sorted(counts.items()))
