"""`kmnist-fa interpret|evaluate`."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.table import Table
from rich.text import Text

from ..core.atomic import is_stdout
from ..core.errors import OptionError
from .common import (
    CpuOpt,
    DataOpt,
    DatasetOpt,
    JsonOpt,
    ModelsDirOpt,
    QuietOpt,
    SplitOpt,
    TtaNOpt,
    app,
    err,
    friendly,
    note,
    out,
    print_json,
    show,
)
from .progress import inference_progress


@app.command("interpret")
@friendly
def interpret_cmd(run_name: str = typer.Argument(..., metavar="RUN", help="Run name or folder."),
                  dataset: Optional[str] = DatasetOpt, data: Optional[Path] = DataOpt, split: str = SplitOpt,
                  tta: bool = typer.Option(False, "--tta/--no-tta", help="Predict with fastai tta."),
                  tta_n: Optional[int] = TtaNOpt,
                  top_k: int = typer.Option(16, "--top-k", min=1, max=64, help="Images in the top-losses grid."),
                  out_dir: Optional[Path] = typer.Option(None, "--out", help="Output folder "
                                                         "(default: models/RUN/interpret/)."),
                  models_dir: Optional[Path] = ModelsDirOpt, quiet: bool = QuietOpt,
                  cpu: bool = CpuOpt):
    """Confusion matrix, top losses, most-confused pairs, per-class metrics and an HTML report."""
    from ..infer.interpret import interpret, write_interpretation
    from ..infer.predict import load_run, run_data

    if is_stdout(out_dir):
        raise OptionError("--out -: interpret writes a folder of files (PNG, CSV, HTML), not one to stdout; "
                          "name a folder")
    run = load_run(run_name, models_dir, cpu=cpu)
    d = run_data(run, data, dataset)
    with inference_progress([run], quiet):
        interp, notes = interpret(run, d, split, tta, tta_n or run.tta.n)
    target = out_dir or run.path / "interpret"
    res = write_interpretation(run, interp, target, split, tta, notes, top_k)
    for msg in notes:
        err.print(note("note:", "yellow", msg), highlight=False, soft_wrap=True)
    t = Table(title="most confused (actual -> predicted)")
    for c in ("actual", "predicted", "count"):
        t.add_column(c, justify="right" if c == "count" else "left")
    for r in res["most_confused"][:15]:
        t.add_row(r["actual"], r["predicted"], str(r["count"]))
    show(t)
    p = Table(title=f"per class ({split}, {len(interp.targs):,} images{', TTA' if tta else ''})")
    for c in ("class", "precision", "recall", "f1", "support"):
        p.add_column(c, justify="left" if c == "class" else "right")
    for r in res["per_class"]:
        p.add_row(r["name"], f"{r['precision']:.3f}", f"{r['recall']:.3f}", f"{r['f1']:.3f}", str(r["support"]))
    show(p)
    out.print(f"accuracy {res['accuracy']:.4f}, macro-F1 {res['macro_f1']:.4f}; wrote confusion.png, "
              f"top_losses.png, most_confused.csv, per_class.csv, report.html in {target}")


@app.command("evaluate")
@friendly
def evaluate_cmd(run_names: list[str] = typer.Argument(..., metavar="RUN...", help="Runs to evaluate."),
                 dataset: Optional[str] = DatasetOpt, data: Optional[Path] = DataOpt, split: str = SplitOpt,
                 tta: bool = typer.Option(False, "--tta/--no-tta", help="Predict with fastai tta."),
                 tta_n: Optional[int] = TtaNOpt,
                 as_json: bool = JsonOpt,
                 models_dir: Optional[Path] = ModelsDirOpt, quiet: bool = QuietOpt,
                 cpu: bool = CpuOpt):
    """Accuracy, loss and error count of runs on a split; flags runs trained on other data or splits."""
    from dataclasses import asdict

    from ..infer.interpret import evaluate
    from ..infer.predict import load_run, run_data

    results, splits = [], set()
    for name in run_names:
        run = load_run(name, models_dir, cpu=cpu)
        with inference_progress([run], quiet):
            results.append(evaluate(run, run_data(run, data, dataset), split, tta, tta_n or run.tta.n))
        splits.add((run.record.data.fingerprint, run.split()))
    if split == "valid" and len(splits) > 1:
        for r in results:
            r.flags.append("runs were validated on different splits: accuracies are not comparable")
    if as_json:
        print_json([asdict(r) for r in results])
        return
    t = Table(title=f"evaluation on the {split} split{' with TTA' if tta else ''}")
    for c in ("run", "arch", "images", "accuracy", "loss", "errors", "flags"):
        t.add_column(c, justify="right" if c in ("images", "accuracy", "loss", "errors") else "left")
    for r in results:
        t.add_row(r.name, r.arch, f"{r.n:,}", f"{r.accuracy:.4f}", f"{r.loss:.4f}", str(r.errors),
                  Text("; ".join(r.flags), style="yellow"))
    show(t)
