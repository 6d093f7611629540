"""`kmnist-fa models [show]`: saved runs."""
from __future__ import annotations

from pathlib import Path
from shlex import quote
from typing import Optional

import typer
from rich.table import Table
from rich.text import Text

from .common import JsonOpt, ModelsDirOpt, friendly, models_app, out, print_json, show


@models_app.callback()
@friendly
def models_list(ctx: typer.Context, models_dir: Optional[Path] = ModelsDirOpt,
                as_json: bool = JsonOpt):
    """List saved runs, then the reference runs shipped with kmnist-fa (`reference/NAME`): name, arch,
    epochs, valid accuracy, status, date. A run whose run.json does not load is listed as unreadable; an
    unfinished one that no process is training any more as interrupted, with the command that resumes it."""
    if ctx.invoked_subcommand is not None:
        ctx.obj = models_dir
        return
    from ..runs.paths import REFERENCE_PREFIX, reference_runs
    from ..runs.paths import models_dir as mdir
    from ..runs.record import RunRecord
    from ..runs.store import Unreadable, list_runs

    base = mdir(models_dir)
    rows = list_runs(models_dir) + [RunRecord.read(p) for p in reference_runs()]

    def is_ref(r) -> bool:
        return r.path.parent == reference_runs()[0].parent

    def address(r) -> str:  # what `models show`, `predict -m` ... accept
        return REFERENCE_PREFIX + r.path.name if is_ref(r) else str(r.path.relative_to(base))

    resume = {id(r): resume_hint(r, address(r), models_dir) for r in rows
              if not isinstance(r, Unreadable) and not is_ref(r)}
    if as_json:
        print_json([
            {"name": address(r), "path": str(r.path), "status": "unreadable", "error": r.reason}
            if isinstance(r, Unreadable) else
            {"name": address(r), "path": str(r.path), "arch": r.arch,
             "status": "interrupted" if resume.get(id(r)) else r.status, "epochs_done": r.epochs_done,
             "total_epochs": r.total_epochs, "best": vars(r.best) if r.best else None, "created": r.created,
             "reference": is_ref(r), **({"resume": resume[id(r)]} if resume.get(id(r)) else {})}
            for r in rows])
        return
    t = Table(title=f"runs in {mdir(models_dir)}")
    for c in ("name", "arch", "epochs", "valid acc", "split", "status", "created"):
        t.add_column(c, justify="right" if c in ("epochs", "valid acc") else "left")
    for r in rows:
        if isinstance(r, Unreadable):
            t.add_row(address(r), "", "", "", "", Text(f"unreadable: {r.reason}", style="red"), "")
            continue
        acc = r.best.accuracy if r.best else None
        status = "reference" if is_ref(r) else "interrupted" if resume[id(r)] else r.status
        t.add_row(address(r), r.arch, f"{r.epochs_done}/{r.total_epochs}", "-" if acc is None else f"{acc:.4f}",
                  r.split_kind, status, r.created[:16].replace("T", " "))
    show(t)
    for r in rows:
        if resume.get(id(r)):
            out.print(f"{address(r)}: interrupted; continue with `{resume[id(r)]}`", highlight=False)
    _list_pipelines(base, models_dir)


def _list_pipelines(base: Path, models_dir: Path | None) -> None:
    """One line per self-training pipeline record: its state and where to see its runs."""
    from ..core.errors import KmnistError
    from ..runs.pipeline import SUFFIX, PipelineRecord

    where = f" --models-dir {quote(str(models_dir))}" if models_dir else ""
    for f in sorted(base.glob(f"*{SUFFIX}")):
        name = f.name[:-len(SUFFIX)]
        try:
            state = PipelineRecord.read(name, models_dir).status
        except KmnistError as e:
            state = f"unreadable ({e})"
        state = "unfinished" if state == "running" else state
        out.print(f"pipeline {name}: {state}; its runs and scores: `kmnist-fa models{where} show {quote(name)}`",
                  highlight=False)


def resume_hint(rec, name: str, models_dir: Path | None) -> str | None:
    """The command that resumes `rec` when it is unfinished and its writer is gone, else None.

    run.json says `running` from the first epoch until the last, and a killed trainer
    cannot change it; the run lock, which dies with its holder, tells the two apart.
    Where the lock cannot be probed, the run keeps the status its record gives.
    """
    from ..runs.pipeline import pipeline_file, pipeline_of
    from ..runs.store import writer_alive

    if rec.complete or writer_alive(rec.path) is not False:
        return None
    own = pipeline_of(rec.config)
    if own and pipeline_file(own["name"], rec.path.parent).is_file():  # a generation: the pipeline continues it
        name = own["name"]
    return f"kmnist-fa train --resume {quote(name)}" + (f" --models-dir {quote(str(models_dir))}" if models_dir else "")


@models_app.command("show")
@friendly
def models_show(ctx: typer.Context, name: str = typer.Argument(..., help="Run name or folder."),
                as_json: bool = typer.Option(False, "--json", help="Print run.json (in the current format; "
                                             "`status` says interrupted for an unfinished run no process trains).")):
    """One run's data, split, metrics and the options that shaped it (unset ones and those of unused features
    are left out; `--json` has them all)."""
    from ..config.shown import shown_options
    from ..core.errors import RunError
    from ..runs.paths import run_path
    from ..runs.pipeline import PipelineRecord, pipeline_file, pipeline_of
    from ..runs.record import RunRecord, lineage

    try:
        rec = RunRecord.read(run_path(name, ctx.obj))
    except RunError:
        if not pipeline_file(name, ctx.obj).is_file():
            raise
        rec = None
    own = pipeline_of(rec.config) if rec else {"name": name}
    home = rec.path.parent if rec else ctx.obj  # a pipeline's record sits beside its runs (reference/ too)
    pipe, trouble = None, "its record is gone"
    if rec is None:
        _show_pipeline(PipelineRecord.read(name, home), home, as_json)
        return
    if own and pipeline_file(own["name"], home).is_file():
        try:
            pipe = PipelineRecord.read(own["name"], home)
        except RunError as e:  # the run itself is fine: show it, and say what is wrong with its pipeline's record
            trouble = f"its record is unreadable: {e}"
    resume = resume_hint(rec, name, ctx.obj)
    if as_json:
        print_json({**rec.to_json(), **({"status": "interrupted", "resume": resume} if resume else {})})
        return
    t = Table(title=f"run {rec.name}", show_header=False)
    t.add_column("key", style="bold")
    t.add_column("value")
    b, s = rec.best, rec.config.split
    rows = [
        ("arch", f"{rec.arch} ({rec.n_params:,} parameters)"),
        ("status", f"{'interrupted' if resume else rec.status}, {rec.epochs_done}/{rec.total_epochs} epochs, "
                   f"{rec.wall_time_s:.0f}s on {rec.device}" + (f"; continue with `{resume}`" if resume else "")),
        ("data", f"{rec.data.name} ({rec.data.root})"),
        ("split", f"{s.kind}: {rec.split.n_train:,} train / {rec.split.n_valid:,} valid, seed {s.seed}"),
        ("lr", f"{rec.lr:.3g} ({rec.lr_source})"),
        ("best", "-" if b is None else f"epoch {b.epoch}" + ("" if b.accuracy is None else
                 f": accuracy {round(b.accuracy, 4)}, valid loss {b.valid_loss}")),
        ("normalisation", f"mean {rec.norm.mean:.4f}, std {rec.norm.std:.4f}"),
        ("versions", ", ".join(f"{k} {v}" for k, v in rec.versions.items() if v is not None)),
    ]
    p = rec.extra.get("pseudo")  # untrusted like all of run.json: shown as bounded text
    if isinstance(p, dict):
        teachers = p.get("teachers")
        names = ", ".join(map(str, teachers)) if isinstance(teachers, list) else str(teachers)
        rows.append(("self-training", f"{str(p.get('images'))[:12]} pseudo-labelled test images from "
                                      f"{names[:200]} (p >= {str(p.get('threshold'))[:12]})"))
    d = rec.extra.get("distill")
    if isinstance(d, dict):
        teachers = d.get("teachers")
        names = ", ".join(str(t.get("name")) if isinstance(t, dict) else str(t) for t in teachers) \
            if isinstance(teachers, list) else str(teachers)
        rows.append(("distillation", f"soft targets of {names[:200]} (weight {str(d.get('weight'))[:12]}, "
                                     f"temperature {str(d.get('temp'))[:12]})"))
    rows += [("lineage", " <- ".join([rec.name, *lineage(rec)]))] if rec.parent else []
    if own:
        rows.append(("pipeline", f"generation {str(own.get('generation'))[:40]} ({str(own.get('index'))[:4]} of "
                                 f"{str(own.get('of'))[:4]}) of pipeline {own['name'][:200]}"
                                 + ("" if pipe else f" ({trouble})")))
    rows += [(f"option {k}", str(v)) for k, v in shown_options(rec.config).items()]
    for k, v in rows:
        t.add_row(k, v)
    show(t)
    if pipe:
        _show_pipeline(pipe, home, False)


def _show_pipeline(pipe, models_dir: Path | None, as_json: bool) -> None:
    """A pipeline's runs, their state and scores, and its cross-validated score when it has one."""
    from .lineage import cv_line, pipeline_table

    if as_json:
        print_json(pipe.to_json())
        return
    show(pipeline_table(pipe, models_dir))
    line = cv_line(pipe)
    if line:
        out.print(line, highlight=False)
    if pipe.status != "complete":
        hint = f"kmnist-fa train --resume {quote(pipe.name)}" + (f" --models-dir {quote(str(models_dir))}"
                                                                 if models_dir else "")
        out.print(f"pipeline {pipe.name}: unfinished; continue with `{hint}`", highlight=False)
