"""`kmnist-fa models [show]`: saved runs."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from .common import ModelsDirOpt, friendly, models_app, out


def _total(meta: dict) -> int:
    return meta.get("total_epochs") or meta["config"]["epochs"]


@models_app.callback()
@friendly
def models_list(ctx: typer.Context, models_dir: Optional[Path] = ModelsDirOpt,
                as_json: bool = typer.Option(False, "--json", help="Machine-readable output.")):
    """List saved runs: name, arch, epochs, valid accuracy, status, date."""
    if ctx.invoked_subcommand is not None:
        ctx.obj = models_dir
        return
    from ..runs import list_runs, models_dir as mdir

    rows = list_runs(models_dir)
    if as_json:
        out.print_json(json.dumps([{k: r.get(k) for k in ("name", "arch", "status", "epochs_done", "best", "created",
                                                          "_path", "error")} for r in rows]))
        return
    t = Table(title=f"runs in {mdir(models_dir)}")
    for c in ("name", "arch", "epochs", "valid acc", "split", "status", "created"):
        t.add_column(c, justify="right" if c in ("epochs", "valid acc") else "left")
    for r in rows:
        if "error" in r:
            t.add_row(r["name"], "", "", "", "", f"[red]{r['error']}[/]", "")
            continue
        acc = (r.get("best") or {}).get("accuracy")
        t.add_row(r["name"], r.get("arch", "?"), f"{r.get('epochs_done', 0)}/{_total(r)}",
                  "-" if acc is None else f"{acc:.4f}", r.get("split", {}).get("kind", "?"), r.get("status", "?"),
                  r.get("created", ""))
    out.print(t)


@models_app.command("show")
@friendly
def models_show(ctx: typer.Context, name: str = typer.Argument(..., help="Run name or folder."),
                as_json: bool = typer.Option(False, "--json", help="Print run.json as is.")):
    """One run's options, data, split and metrics."""
    from ..runs import read_run, run_path

    meta = read_run(run_path(name, ctx.obj))
    if as_json:
        out.print_json(json.dumps(meta))
        return
    t = Table(title=f"run {meta['name']}", show_header=False)
    t.add_column("key", style="bold")
    t.add_column("value")
    best = meta.get("best") or {}
    rows = [
        ("arch", f"{meta['arch']} ({meta['n_params']:,} parameters)"),
        ("status", f"{meta['status']}, {meta.get('epochs_done', 0)}/{_total(meta)} epochs, "
                   f"{meta.get('wall_time_s', 0):.0f}s on {meta.get('device')}"),
        ("data", f"{meta['data']['name']} ({meta['data']['root']})"),
        ("split", f"{meta['split']['kind']}: {meta['split']['n_train']:,} train / {meta['split']['n_valid']:,} valid, "
                  f"seed {meta['split']['seed']}"),
        ("lr", f"{meta['lr']:.3g} ({meta['lr_source']})"),
        ("best", "-" if not best else f"epoch {best['epoch'] + 1}: accuracy "
                 f"{best['accuracy'] if best.get('accuracy') is None else round(best['accuracy'], 4)}, "
                 f"valid loss {best.get('valid_loss')}"),
        ("normalisation", f"mean {meta['norm']['mean']:.4f}, std {meta['norm']['std']:.4f}"),
        ("versions", ", ".join(f"{k} {v}" for k, v in meta.get("versions", {}).items())),
    ]
    from ..transfer import lineage

    rows += [("lineage", " <- ".join([meta["name"], *lineage(meta)]))] if meta.get("parent") else []
    rows += [(f"option {k}", str(v)) for k, v in meta["config"].items() if k != "extra"]
    for k, v in rows:
        t.add_row(k, v)
    out.print(t)
