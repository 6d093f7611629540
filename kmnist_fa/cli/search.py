"""`kmnist-fa sweep|tune`: searches over training options on the engine in `kmnist_fa.pipelines.search`."""
from __future__ import annotations

import threading
from pathlib import Path
from typing import Optional

import typer
from rich.table import Table
from rich.text import Text

from ..config.recipes import resolve_config
from ..core.errors import OptionError
from ..core.secrets import redact
from .common import (
    JsonOpt,
    ModelsDirOpt,
    TrackOpt,
    app,
    checked_seed,
    err,
    friendly,
    interrupt_note,
    messages_to,
    print_json,
    show,
    training_options,
)

FoldsOpt = typer.Option(None, "--folds", help="With --n-folds: which folds, e.g. 0,1 or all (default all).")
JobsOpt = typer.Option(1, "--jobs", "-j", min=1, help="Worker processes on this machine (one GPU each when "
                       "there are several: each takes a free one).")
ThreadsOpt = typer.Option(None, "--threads", min=1, help="CPU threads per worker (default: cores / jobs). "
                          "Results are bit-identical only for the same value.")
SaveRecipeOpt = typer.Option(None, "--save-recipe", help="Also write the best config as a recipe .toml here "
                             "(`-`: to stdout; always written to models/NAME/best.toml).")


def _report_failures(outcome: dict[str, str]) -> None:
    failed = {k: v for k, v in outcome.items() if v.startswith(("failed", "unreadable"))}
    for k, v in failed.items():
        err.print(Text(f"{k}: {v}", style="red"), highlight=False, soft_wrap=True)
    if failed:
        raise typer.Exit(1)


@app.command("sweep")
@friendly
@training_options
def sweep_cmd(arch: Optional[str] = typer.Argument(None, help="Architecture (see `kmnist-fa archs`)."),
              param: list[str] = typer.Option(..., "--param", "-p", help="NAME=V1,V2,... to sweep; repeatable "
                                              "(lr, wd, mom, epochs, bs, dropout, label_smoothing, opt, aug, ...)."),
              mode: str = typer.Option("line", "--mode", help="line: vary one parameter at a time around the base "
                                       "options (the report's method); grid: every combination."),
              folds: Optional[str] = FoldsOpt, jobs: int = JobsOpt, threads: Optional[int] = ThreadsOpt,
              name: Optional[str] = typer.Option(None, "--name", help="Sweep name: runs go to models/NAME/ "
                                                 "(default ARCH-sweep)."),
              save_recipe: Optional[Path] = SaveRecipeOpt, track: list[str] = TrackOpt,
              as_json: bool = JsonOpt, models_dir: Optional[Path] = ModelsDirOpt, **opts):
    """Line or grid search over k folds; resumable; results table, CSV, plot and best recipe."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
    )

    from ..pipelines import sweep as sw
    from ..runs.paths import check_name
    from ..runs.paths import models_dir as mdir

    say = messages_to({"--save-recipe": save_recipe}, as_json)
    if opts.get("fold") is not None or opts.get("full"):
        raise OptionError("sweep: use --n-folds with --folds (or the holdout), not --fold/--full")
    params = [sw.parse_param(p) for p in param]
    if opts.get("n_folds"):
        opts["fold"] = 0  # a valid placeholder for the base config; each job sets its own fold
    cfg, recipe = resolve_config(arch, opts.pop("recipe"), opts)
    sweep_name = check_name(name or f"{cfg.arch}-sweep")
    from ..data.datasets import load_dataset
    from ..train.tracking import check_trackers

    track = check_trackers(track)
    load_dataset(cfg.data.dataset, cfg.data.data)  # bad data is one line now, not a failure in every member
    root = mdir(models_dir) / sweep_name
    plan = sw.plan(cfg, params, mode, cfg.split.n_folds, folds)
    n_cfg = len({sw.config_id(j.config) for j in plan})
    err.print(f"sweep {sweep_name}: {n_cfg} configs x {len(plan) // n_cfg} folds = {len(plan)} runs "
              f"({mode}, recipe {recipe or 'none'}, {jobs} at once) in {root}", highlight=False)
    stop = threading.Event()
    with Progress(TextColumn("{task.description}", markup=False), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=err, transient=True) as prog:
        tasks = {j.name: prog.add_task(j.name, total=None) for j in plan}

        def refresh():
            while not stop.wait(1.0):
                for n, (done, total) in sw.progress_of(root, plan).items():
                    prog.update(tasks[n], completed=done, total=total or None)

        t = threading.Thread(target=refresh, daemon=True)
        t.start()
        try:
            with interrupt_note("the same sweep command again (finished runs are kept)"):
                outcome = sw.run_sweep(cfg, plan, root, jobs, threads, track)
        finally:
            stop.set()
            t.join()
    rows = sw.results(root, plan)
    plot_path = sw.write_results(root, rows, params, cfg)
    best = sw.best_recipe(rows, cfg, root / "best.toml")
    if best and save_recipe:
        from ..core.atomic import write_text

        write_text(save_recipe, best.read_text())
    if as_json:
        print_json({"outcome": outcome, "results": rows, "best_recipe": str(best) if best else None})
    else:
        tbl = Table(title=f"sweep {sweep_name} ({mode}): {sw.describe(outcome)}")
        for c in ("config", "folds", "valid acc", "± sd", "valid loss", "time s"):
            tbl.add_column(c, justify="left" if c == "config" else "right")
        for r in rows:
            tbl.add_row(r["config"], f"{r['folds_done']}/{r['folds']}",
                        "-" if r["acc_mean"] is None else f"{r['acc_mean']:.4f}",
                        "-" if r["acc_sd"] is None else f"{r['acc_sd']:.4f}",
                        "-" if r["loss_mean"] is None else f"{r['loss_mean']:.4f}", f"{r['time_s']:.0f}")
        show(tbl, say)
        say.print(f"wrote {root / 'results.csv'}, {plot_path}" + (f", {best}" if best else ""))
    _report_failures(outcome)


@app.command("tune")
@friendly
@training_options
def tune_cmd(arch: Optional[str] = typer.Argument(None, help="Architecture (see `kmnist-fa archs`)."),
             param: list[str] = typer.Option(..., "--param", "-p", help="What to search; repeatable: a range "
                                             "LOW:HIGH (uniform; whole numbers for int options), LOW:HIGH:log, or "
                                             "choices V1,V2,... e.g. lr=1e-4:1e-2:log, dropout=0.3:0.6, "
                                             "aug=light,heavy."),
             trials: int = typer.Option(20, "--trials", "-n", min=1, help="Trials the study should have in all "
                                        "(finished, pruned or failed; across every worker). Re-run with a larger "
                                        "number to extend a study."),
             folds: Optional[str] = FoldsOpt,
             sampler: str = typer.Option("tpe", "--sampler", help="tpe (Optuna's default), random, or grid "
                                         "(every combination of choices)."),
             pruner: str = typer.Option("median", "--pruner", help="Stop unpromising trials early on their first "
                                        "fold: median, hyperband, or none."),
             storage: Optional[str] = typer.Option(None, "--storage", help="Optuna storage shared by every worker: "
                                                   "an RDB URL (postgresql://..., mysql://..., sqlite:///FILE), "
                                                   "grpc://HOST:PORT, or a journal file (a path ending in "
                                                   ".journal; default models/STUDY/study.journal)."),
             study: Optional[str] = typer.Option(None, "--study", "--name", help="Study name; its runs go to "
                                                 "models/STUDY/ (default ARCH-tune)."),
             sampler_seed: int = typer.Option(0, "--sampler-seed", help="Seed of the sampler (trainings use "
                                              "--seed)."),
             jobs: int = JobsOpt, threads: Optional[int] = ThreadsOpt, save_recipe: Optional[Path] = SaveRecipeOpt,
             track: list[str] = TrackOpt, as_json: bool = JsonOpt, models_dir: Optional[Path] = ModelsDirOpt, **opts):
    """Optuna search over ranges and choices, k-fold, pruned, resumable, shared by many workers.

    Re-running the same command continues the study; the same command on other
    machines with one --storage URL joins it. Writes results.csv, best.toml and plots.
    """
    from rich.live import Live

    from ..pipelines import search
    from ..runs.paths import check_name
    from ..runs.paths import models_dir as mdir

    say = messages_to({"--save-recipe": save_recipe}, as_json)
    if opts.get("fold") is not None or opts.get("full"):
        raise OptionError("tune: use --n-folds with --folds (or the holdout), not --fold/--full")
    params = [search.parse_param(p) for p in param]
    if len({p.name for p in params}) != len(params):
        raise OptionError("--param: each parameter may be given once")
    if opts.get("n_folds"):
        opts["fold"] = 0  # a valid placeholder for the base config; each trial sets its own folds
    cfg, recipe = resolve_config(arch, opts.pop("recipe"), opts)
    name = check_name(study or f"{cfg.arch}-tune", "--study")
    from ..data.datasets import load_dataset

    load_dataset(cfg.data.dataset, cfg.data.data)  # bad data is one line now, not a failure in every trial
    root = mdir(models_dir) / name
    spec = search.StudySpec(
        root=str(root), study=name, base=cfg.to_dict(), params=params, kind="tune", budget=trials,
        folds=search.fold_list(cfg.split.n_folds, folds), storage=storage, sampler=sampler, pruner=pruner,
        seed=checked_seed(sampler_seed), epochs=cfg.optim.epochs,
        identity={"kind": "tune", "base": cfg.to_dict(), "space": [str(p) for p in params],
                  "folds": search.fold_list(cfg.split.n_folds, folds)})
    if pruner != "none":
        search.pruning_available()
    from ..train.tracking import check_trackers, parent_run

    spec.track = check_trackers(track)
    st = search.open_study(spec)  # storage, identity and sampler checked before any worker starts
    if "mlflow" in spec.track:
        spec.tracking_parent = parent_run(name, "tune", {"space": " ".join(str(p) for p in params)})
    if sampler == "grid":  # the grid is queued up to the budget; workers run the queue
        with search.claim_lock(spec.root):
            search.enqueue_grid(st, spec, trials)
        spec.budget = None
    err.print(f"study {name}: {trials} trials x {len(spec.folds)} folds ({sampler}, pruner {pruner}, recipe "
              f"{recipe or 'none'}, {jobs} worker(s)) in {redact(search.storage_url(spec))}", highlight=False)
    stop = threading.Event()
    with Live(_trials_table(st, spec), console=err, transient=True, auto_refresh=False) as live:
        def refresh():
            while not stop.wait(1.0):
                live.update(_trials_table(st, spec), refresh=True)

        t = threading.Thread(target=refresh, daemon=True)
        t.start()
        try:
            with interrupt_note("the same tune command again (finished trials are kept)"):
                outcome = search.run_workers(spec, jobs, threads)
        finally:
            stop.set()
            t.join()
    written = search.write_outputs(st, spec)
    if "best" in written and save_recipe:
        from ..core.atomic import write_text

        write_text(save_recipe, written["best"].read_text())
    rows = search.trial_rows(st, spec)
    if as_json:
        print_json({"outcome": outcome, "trials": rows, "files": {k: str(v) for k, v in written.items()}})
    else:
        show(_trials_table(st, spec, rows, title=f"study {name}: {_states(rows)}"), say)
        say.print("wrote " + ", ".join(str(p) for p in written.values()))
    _report_failures(outcome)


def _states(rows: list[dict]) -> str:
    counts: dict[str, int] = {}
    for r in rows:
        counts[r["state"]] = counts.get(r["state"], 0) + 1
    return ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))


def _trials_table(st, spec, rows: list[dict] | None = None, title: str | None = None, last: int | None = None):
    """Trials with their parameters, fold accuracies and state; the live view shows the latest 15."""
    from ..pipelines import search

    rows = rows if rows is not None else search.trial_rows(st, spec)[-15:]
    folds = [search.fold_column(f) for f in spec.folds]
    t = Table(title=title or f"study {spec.study}")
    for c in ("trial", "state", *[p.name for p in spec.params], *folds, "mean", "± sd", "epochs", "time s"):
        t.add_column(c, justify="left" if c == "state" else "right")

    def fmt(v, acc=True):
        return "-" if v is None else (f"{v:.4f}" if acc else f"{v:.4g}") if isinstance(v, float) else str(v)

    for r in rows:
        t.add_row(str(r["trial"]), r["state"], *[fmt(r.get(p.name), acc=False) for p in spec.params],
                  *[fmt(r.get(f)) for f in folds], fmt(r["acc_mean"]), fmt(r["acc_sd"]), str(r["epochs"]),
                  f"{r['time_s']:.0f}")
    return t
