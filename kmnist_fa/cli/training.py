"""`kmnist-fa archs|train|recipes|lr-find|sweep`."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from ..errors import OptionError
from .common import DataOpt, DatasetOpt, ModelsDirOpt, app, err, friendly, out


@app.command("archs")
def archs():
    """List the registered architectures with their parameter counts."""
    from ..models import ARCHS, n_params

    t = Table(title="architectures")
    for c in ("name", "params", "default bn", "default dropout", "description"):
        t.add_column(c, justify="right" if c == "params" else "left")
    for a in ARCHS.values():
        t.add_row(a.name, f"{n_params(a.build()):,}", str(a.default_bn), str(a.default_dropout), a.description)
    out.print(t)




def _config(arch: str | None, recipe: str | None, opts: dict):
    from ..recipes import resolve_config

    opts = {**opts, "data": str(opts["data"]) if opts.get("data") else None}
    return resolve_config(arch, recipe, opts)


def _train_options(fn):
    """Attach the options shared by `train` and `lr-find` (one definition, one --help text).

    Every default is None, meaning "from the recipe" (the architecture's default
    recipe unless --recipe names another), so only options typed on the command
    line override it.
    """
    import inspect

    rec = " (default: from the recipe)"
    opts = dict(
        recipe=(Optional[str], typer.Option(None, "--recipe", help="Named recipe (`kmnist-fa recipes`) or a .toml "
                                            "file; default: default-ARCH. Options below override it.")),
        epochs=(Optional[int], typer.Option(None, "--epochs", help="Epochs to train" + rec)),
        bs=(Optional[int], typer.Option(None, "--bs", help="Batch size" + rec)),
        lr=(Optional[float], typer.Option(None, "--lr", help="Learning rate (max LR for one-cycle); when neither "
                                          "this nor the recipe sets it, lr_find's valley suggestion is used.")),
        opt=(Optional[str], typer.Option(None, "--opt", help="Optimiser: sgd, adam, rmsprop" + rec)),
        mom=(Optional[float], typer.Option(None, "--mom", help="Momentum (Adam: beta1); fixes one-cycle's "
                                           "momentum cycling at this value.")),
        wd=(Optional[float], typer.Option(None, "--wd", help="Weight decay (default: fastai's for the optimiser).")),
        schedule=(Optional[str], typer.Option(None, "--schedule", help="LR schedule: one-cycle, flat, cosine" + rec)),
        aug=(Optional[str], typer.Option(None, "--aug", help="Batch augmentation: none, light (shift ±2px, rotate "
                                         "±15°), heavy (+ zoom, warp, brightness, contrast)" + rec)),
        mixup=(Optional[bool], typer.Option(None, "--mixup/--no-mixup", help="fastai MixUp callback.")),
        cutmix=(Optional[bool], typer.Option(None, "--cutmix/--no-cutmix", help="fastai CutMix callback.")),
        label_smoothing=(Optional[float], typer.Option(None, "--label-smoothing", help="Label smoothing" + rec)),
        bn=(Optional[bool], typer.Option(None, "--bn/--no-bn", help="Batch norm after conv activations "
                                         "(default: the recipe's, else the architecture's).")),
        dropout=(Optional[float], typer.Option(None, "--dropout", help="Dropout before hidden FC layers; 0 disables "
                                               "(default: the recipe's, else the architecture's).")),
        seed=(Optional[int], typer.Option(None, "--seed", help="Random seed: split, init, shuffling, augmentation "
                                          "(default 42).")),
        valid_pct=(Optional[float], typer.Option(None, "--valid-pct", help="Stratified holdout fraction (default 0.1).")),
        n_folds=(Optional[int], typer.Option(None, "--n-folds", help="Stratified k-fold: number of folds.")),
        fold=(Optional[int], typer.Option(None, "--fold", help="Which fold (0-based) validates, with --n-folds.")),
        full=(Optional[bool], typer.Option(None, "--full", help="Train on every labelled image (no validation).")),
        cpu=(Optional[bool], typer.Option(None, "--cpu", help="Use the CPU even when CUDA is available.")),
        from_run=(Optional[str], typer.Option(None, "--from", help="Transfer: start from this run's weights (same "
                                              "arch; head re-created if the classes differ) or a state_dict .pth.")),
        freeze_epochs=(Optional[int], typer.Option(None, "--freeze-epochs", help="Transfer: epochs with the body "
                                                   "frozen before unfreezing with discriminative LRs (default 1).")),
        lr_mult=(Optional[float], typer.Option(None, "--lr-mult", help="Transfer: head LR / body LR once "
                                               "unfrozen (default 100, fastai's).")),
        partial=(Optional[bool], typer.Option(None, "--partial", help="Transfer: skip layers that do not fit "
                                              "(listed) instead of failing.")),
        dataset=(Optional[str], DatasetOpt),
        data=(Optional[Path], DataOpt),
    )
    sig = inspect.signature(fn)
    params = [p for p in sig.parameters.values() if p.kind is not p.VAR_KEYWORD]
    params += [inspect.Parameter(k, inspect.Parameter.KEYWORD_ONLY, default=o, annotation=t)
               for k, (t, o) in opts.items()]
    fn.__signature__ = sig.replace(parameters=params)
    return fn


@app.command("train")
@friendly
@_train_options
def train_cmd(arch: Optional[str] = typer.Argument(None, help="Architecture (see `kmnist-fa archs`); optional "
                                                  "with a --recipe that names one."),
              name: Optional[str] = typer.Option(None, "--name", help="Run name (default ARCH-DATE-TIME)."),
              resume: Optional[str] = typer.Option(None, "--resume", help="Continue an interrupted run by name; "
                                                   "its saved options are used."),
              quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars or epoch table."),
              models_dir: Optional[Path] = ModelsDirOpt, **opts):
    """Train a model into models/NAME/ (best epoch kept, resumable, atomic writes)."""
    from ..learner import resume as resume_run
    from ..learner import train
    from ..progress import RichProgress
    from ..runs import check_name

    progress = None if quiet else RichProgress(err)
    if resume:
        if arch is not None:
            raise OptionError("--resume uses the run's saved options: give no ARCH")
        res = resume_run(resume, models_dir, quiet=quiet, progress=progress)
    else:
        if arch is None and not opts.get("recipe"):
            raise OptionError("ARCH is required (see `kmnist-fa archs`), or --recipe NAME, or --resume NAME")
        cfg, _ = _config(arch, opts.pop("recipe"), opts)
        if name:
            check_name(name)
        res = train(cfg, name, models_dir, quiet=quiet, progress=progress,
                    log=(lambda m: None) if quiet else (lambda m: err.print(m, highlight=False)))
    best = res.meta.get("best") or {}
    acc = best.get("accuracy")
    out.print(f"run {res.meta['name']}: {res.meta['epochs_done']} epochs in {res.meta['wall_time_s']:.0f}s; "
              + (f"best valid accuracy {acc:.4f} at epoch {best['epoch'] + 1}" if acc is not None
                 else "no validation split (--full)") + f" -> {res.path}")


@app.command("recipes")
def recipes_cmd():
    """List training recipes: the report's table rows and each architecture's default."""
    from ..recipes import list_recipes

    t = Table(title="recipes (kmnist-fa train --recipe NAME)")
    for c in ("name", "arch", "epochs", "opt", "lr", "schedule", "aug", "description"):
        t.add_column(c, no_wrap=c != "description")
    for name, r in list_recipes().items():
        t.add_row(name, r.get("arch", ""), str(r.get("epochs", "")), r.get("opt", ""), str(r.get("lr", "lr_find")),
                  r.get("schedule", ""), r.get("aug", ""), r.get("description", ""))
    out.print(t)


@app.command("lr-find")
@friendly
@_train_options
def lr_find_cmd(arch: Optional[str] = typer.Argument(None, help="Architecture (see `kmnist-fa archs`)."),
                out_file: Path = typer.Option(Path("lr_find.png"), "--out", help="Where to write the plot (PNG)."),
                **opts):
    """Run fastai's lr_find; print the valley/slide/minimum/steep suggestions and save the plot."""
    from ..learner import build_learner, prepare, suggest_lrs
    from ..progress import RichProgress

    cfg, _ = _config(arch, opts.pop("recipe"), opts)
    _, dls = prepare(cfg)
    learn = build_learner(dls, cfg, progress=RichProgress(err))
    sugg = suggest_lrs(learn, out_file)
    t = Table(title=f"lr_find suggestions ({cfg.arch}, {cfg.opt}, bs {cfg.bs})")
    t.add_column("method")
    t.add_column("lr", justify="right")
    for k, v in sugg.items():
        t.add_row(k, f"{v:.2e}")
    out.print(t)
    out.print(f"plot: {out_file}")


@app.command("sweep")
@friendly
@_train_options
def sweep_cmd(arch: Optional[str] = typer.Argument(None, help="Architecture (see `kmnist-fa archs`)."),
              param: list[str] = typer.Option(..., "--param", "-p", help="NAME=V1,V2,... to sweep; repeatable "
                                              "(lr, wd, mom, epochs, bs, dropout, label_smoothing, opt, aug, ...)."),
              mode: str = typer.Option("line", "--mode", help="line: vary one parameter at a time around the base "
                                       "options (the report's method); grid: every combination."),
              folds: Optional[str] = typer.Option(None, "--folds", help="With --n-folds: which folds, e.g. 0,1 or "
                                                  "all (default all)."),
              jobs: int = typer.Option(1, "--jobs", "-j", min=1, help="Trainings at once (one process each; "
                                       "one GPU each when there are several)."),
              threads: Optional[int] = typer.Option(None, "--threads", min=1, help="CPU threads per training "
                                                    "(default: cores / jobs). Results are bit-identical only "
                                                    "for the same value."),
              name: Optional[str] = typer.Option(None, "--name", help="Sweep name: runs go to models/NAME/ "
                                                 "(default ARCH-sweep)."),
              save_recipe: Optional[Path] = typer.Option(None, "--save-recipe", help="Also write the best config "
                                                         "as a recipe .toml here (always written to "
                                                         "models/NAME/best.toml)."),
              models_dir: Optional[Path] = ModelsDirOpt, **opts):
    """Line or grid search over k folds; resumable; results table, CSV, plot and best recipe."""
    import threading

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from .. import sweep as sw
    from ..runs import check_name, models_dir as mdir

    if opts.get("fold") is not None or opts.get("full"):
        raise OptionError("sweep: use --n-folds with --folds (or the holdout), not --fold/--full")
    params = [sw.parse_param(p) for p in param]
    if opts.get("n_folds"):
        opts["fold"] = 0  # a valid placeholder for the base config; each job sets its own fold
    cfg, recipe = _config(arch, opts.pop("recipe"), opts)
    sweep_name = check_name(name or f"{cfg.arch}-sweep")
    root = mdir(models_dir) / sweep_name
    plan = sw.plan(cfg, params, mode, cfg.n_folds, folds)
    n_cfg = len({sw.config_id(j.config) for j in plan})
    err.print(f"sweep {sweep_name}: {n_cfg} configs x {len(plan) // n_cfg} folds = {len(plan)} runs "
              f"({mode}, recipe {recipe or 'none'}, {jobs} at once) in {root}", highlight=False)
    stop = threading.Event()
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=err, transient=True) as prog:
        tasks = {j.name: prog.add_task(j.name, total=None) for j in plan}

        def refresh():
            while not stop.wait(1.0):
                for n, (done, total) in sw.progress_of(root, plan).items():
                    prog.update(tasks[n], completed=done, total=total or None)

        t = threading.Thread(target=refresh, daemon=True)
        t.start()
        try:
            outcome = sw.run_sweep(cfg, plan, root, jobs, threads)
        finally:
            stop.set()
            t.join()
    rows = sw.results(root, plan)
    plot_path = sw.write_results(root, rows, params, cfg)
    best = sw.best_recipe(rows, cfg, root / "best.toml")
    if best and save_recipe:
        from ..atomic import write_text

        write_text(save_recipe, best.read_text())
    tbl = Table(title=f"sweep {sweep_name} ({mode}): {sw.describe(outcome)}")
    for c in ("config", "folds", "valid acc", "± sd", "valid loss", "time s"):
        tbl.add_column(c, justify="left" if c == "config" else "right")
    for r in rows:
        tbl.add_row(r["config"], f"{r['folds_done']}/{r['folds']}",
                    "-" if r["acc_mean"] is None else f"{r['acc_mean']:.4f}",
                    "-" if r["acc_sd"] is None else f"{r['acc_sd']:.4f}",
                    "-" if r["loss_mean"] is None else f"{r['loss_mean']:.4f}", f"{r['time_s']:.0f}")
    out.print(tbl)
    failed = {k: v for k, v in outcome.items() if v.startswith("failed")}
    for k, v in failed.items():
        err.print(f"[red]{k}: {v}[/]", highlight=False, soft_wrap=True)
    out.print(f"wrote {root / 'results.csv'}, {plot_path}" + (f", {best}" if best else ""))
    if failed:
        raise typer.Exit(1)
