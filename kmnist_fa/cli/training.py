"""`kmnist-fa archs|train|recipes|lr-find`."""
from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from ..config.recipes import resolve_config
from ..core.errors import OptionError
from .common import (
    JsonOpt,
    ModelsDirOpt,
    TrackOpt,
    app,
    err,
    friendly,
    interrupt_note,
    out,
    print_json,
    show,
    training_options,
)


@app.command("archs")
def archs(as_json: bool = JsonOpt):
    """List the registered architectures with their parameter counts."""
    from ..models.registry import ARCHS

    if as_json:
        print_json([{"name": a.name, "params": a.param_count(), "default_bn": a.default_bn,
                     "default_dropout": a.default_dropout, "description": a.description} for a in ARCHS.values()])
        return

    t = Table(title="architectures")
    for c in ("name", "params", "default bn", "default dropout", "description"):
        t.add_column(c, justify="right" if c == "params" else "left")
    for a in ARCHS.values():
        t.add_row(a.name, f"{a.param_count():,}", str(a.default_bn), str(a.default_dropout), a.description)
    show(t)


@app.command("train")
@friendly
@training_options
def train_cmd(arch: Optional[str] = typer.Argument(None, help="Architecture (see `kmnist-fa archs`); optional "
                                                  "with a --recipe that names one."),
              name: Optional[str] = typer.Option(None, "--name", help="Run name (default ARCH-DATE-TIME)."),
              resume: Optional[str] = typer.Option(None, "--resume", help="Continue an interrupted run by name; "
                                                   "its saved options are used."),
              quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars or epoch table."),
              track: list[str] = TrackOpt, models_dir: Optional[Path] = ModelsDirOpt, **opts):
    """Train a model into models/NAME/ (best epoch kept, resumable, atomic writes).

    Ctrl-C stops after saying how to continue; a killed run loses at most the epoch in progress.
    """
    from ..runs.paths import check_name, default_name

    log = (lambda m: None) if quiet else (lambda m: err.print(m, highlight=False))
    from ..runs.pipeline import pipeline_file

    if resume and pipeline_file(resume, models_dir).is_file():
        if arch is not None:
            raise OptionError("--resume uses the pipeline's saved options: give no ARCH")
        return _pipeline(None, resume, models_dir, quiet, log, track)
    if not resume and opts.get("recipe"):
        from ..config.recipes import is_pipeline

        if is_pipeline(opts["recipe"]):
            if arch is not None:
                raise OptionError(f"--recipe {opts['recipe']} names its architecture: give no ARCH")
            return _pipeline(opts, name, models_dir, quiet, log, track)
    if resume:
        if arch is not None:
            raise OptionError("--resume uses the run's saved options: give no ARCH")
        from ..pipelines.training import resume as resume_run
        from ..train.tracking import callbacks

        cbs = callbacks(track)
        with interrupt_note(f"kmnist-fa train --resume {resume}"):
            res = resume_run(resume, models_dir, quiet=quiet, progress=_progress(quiet), log=log, cbs=cbs)
    else:
        if arch is None and not opts.get("recipe"):
            raise OptionError("ARCH is required (see `kmnist-fa archs`), or --recipe NAME, or --resume NAME")
        cfg, _ = resolve_config(arch, opts.pop("recipe"), opts)  # every option is checked before torch loads
        name = check_name(name or default_name(cfg.arch))
        from ..pipelines.training import train
        from ..train.tracking import callbacks

        cbs = callbacks(track)  # trackers checked before training starts
        resume_cmd = f"kmnist-fa train --resume {name}" + (f" --models-dir {models_dir}" if models_dir else "")
        with interrupt_note(resume_cmd):
            res = train(cfg, name, models_dir, quiet=quiet, progress=_progress(quiet), log=log, cbs=cbs)
    from ..train.ddp import is_writer

    if not is_writer():  # data-parallel peers: rank 0 reports
        return
    rec = res.record
    acc = rec.best.accuracy if rec.best else None
    out.print(f"run {rec.name}: {rec.epochs_done} epochs in {rec.wall_time_s:.0f}s; "
              + (f"{'last' if rec.config.keep == 'last' else 'best'} valid accuracy {acc:.4f} at epoch "
                 f"{rec.best.epoch}" if acc is not None
                 else "no validation split (--full)") + f" -> {res.path}", highlight=False)
    if not quiet:
        from shlex import quote

        run = quote(rec.name) + (f" --models-dir {quote(str(models_dir))}" if models_dir else "")
        steps = [f"kmnist-fa predict IMAGES... --model {run}   (image files, folders or an MNIST-format file)"]
        if acc is not None:  # interpretation reads the validation split
            steps.append(f"kmnist-fa interpret {run}   (confusion matrix, top losses, report.html)")
        err.print("next: " + "\n      ".join(steps), highlight=False, soft_wrap=True)


def _pipeline(opts: dict | None, name: str | None, models_dir: Path | None, quiet: bool, log, track: list[str]):
    """`train --recipe PIPELINE` (opts given) or `train --resume PIPELINE` (opts None): run it, then its table."""
    from shlex import quote

    from ..runs.paths import check_name
    from ..runs.paths import models_dir as mdir

    if opts is not None:
        recipe = opts.pop("recipe")
        name = check_name(name or f"{Path(recipe).stem}-{datetime.now():%Y%m%d-%H%M%S}")
    from ..pipelines.selftrain import plan, resume_pipeline, run_pipeline
    from ..train.tracking import callbacks
    from .lineage import cv_line, pipeline_table

    cbs = callbacks(track)
    where = f" --models-dir {quote(str(models_dir))}" if models_dir else ""
    with interrupt_note(f"kmnist-fa train --resume {quote(name)}{where}"):
        if opts is not None:
            res = run_pipeline(plan(recipe, opts, name, models_dir), models_dir, quiet=quiet,
                               progress=_progress(quiet), log=log, cbs=cbs)
        else:
            res = resume_pipeline(name, models_dir, quiet=quiet, progress=_progress(quiet), log=log, cbs=cbs)
    rec = res.record
    if not quiet:
        show(pipeline_table(rec, models_dir), err)
    minutes = sum(r.wall_time_s for r in res.runs.values()) / 60
    line = cv_line(rec)
    out.print(line + f"; {minutes:.1f} min of training" if line else
              f"pipeline {rec.name}: {len(res.runs)} runs in {minutes:.1f} min of training", highlight=False)
    out.print(f"record: {mdir(models_dir) / (rec.name + '.pipeline.json')}", highlight=False)
    if not quiet:
        final = [s.run for s in rec.stages() if s.generation is rec.last]
        steps = [f"kmnist-fa predict IMAGES... --model {quote(final[0])}{where}   (its own TTA settings)",
                 f"kmnist-fa models{where} show {quote(rec.name)}   (the lineage)"]
        err.print("next: " + "\n      ".join(steps), highlight=False, soft_wrap=True)


def _progress(quiet: bool):
    from ..train.progress import RichProgress

    return None if quiet else RichProgress(err)


@app.command("recipes")
def recipes_cmd(as_json: bool = JsonOpt):
    """List training recipes: report-* (the report's table rows), default-ARCH (per architecture), fast (VGG5), and
    default: the self-training pipeline behind the shipped model (its generations' epochs, in order)."""
    from ..config.options import OPTIONS
    from ..config.recipes import list_recipes

    if as_json:
        print_json([{"name": name, **r} for name, r in list_recipes().items()])
        return

    t = Table(title="recipes (kmnist-fa train --recipe NAME)")
    for c in ("name", "arch", "epochs", "opt", "lr", "schedule", "aug", "description"):
        t.add_column(c, no_wrap=c != "description")
    for name, r in list_recipes().items():
        epochs = str(r.get("epochs", ""))
        if "generations" in r:  # a pipeline: each generation's epochs, in order
            epochs = " + ".join(str(g.get("epochs", r.get("epochs", OPTIONS["epochs"].default)))
                                for g in r["generations"])
        t.add_row(name, r.get("arch", ""), epochs, r.get("opt", ""), str(r.get("lr", "lr_find")),
                  r.get("schedule", ""), r.get("aug", ""), r.get("description", ""))
    show(t)


@app.command("lr-find")
@friendly
@training_options(skip=("predict",))
def lr_find_cmd(arch: Optional[str] = typer.Argument(None, help="Architecture (see `kmnist-fa archs`)."),
                out_file: Path = typer.Option(Path("lr_find.png"), "--out", help="Where to write the plot (PNG)."),
                models_dir: Optional[Path] = ModelsDirOpt, **opts):
    """Run fastai's lr_find; print the valley/slide/minimum/steep suggestions and save the plot.

    The loss is the one training would use: --pseudo adds its pseudo-labelled images, --teacher its soft targets.
    """
    from fastai.torch_core import num_distrib

    from ..pipelines.training import lr_find
    from ..train.progress import RichProgress

    cfg, _ = resolve_config(arch, opts.pop("recipe"), opts)
    if num_distrib() > 1:
        raise OptionError("lr-find runs in one process: start it without torchrun / accelerate launch")
    sugg = lr_find(cfg, out_file, models_dir, RichProgress(err))
    t = Table(title=f"lr_find suggestions ({cfg.arch}, {cfg.optim.opt}, bs {cfg.optim.bs})")
    t.add_column("method")
    t.add_column("lr", justify="right")
    for k, v in sugg.items():
        t.add_row(k, f"{v:.2e}")
    show(t)
    out.print(f"plot: {out_file}")
