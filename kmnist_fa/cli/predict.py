"""`kmnist-fa predict|ensemble`, and the runs they use by default (`members`)."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from ..config.options import TtaSettings
from ..core.atomic import is_stdout
from ..core.errors import OptionError
from ..core.predictions import (
    TABLE_COLUMNS,
    describe,
    prediction_rows,
    table_rows,
    used,
    write_probs,
    write_submission,
)
from .common import (
    CpuOpt,
    DataOpt,
    DatasetOpt,
    DefaultMethodOpt,
    JsonOpt,
    MethodOpt,
    ModelsDirOpt,
    QuietOpt,
    SeedOpt,
    TtaNOpt,
    TtaOpt,
    app,
    checked_seed,
    err,
    friendly,
    messages_to,
    note,
    print_json,
    show,
)
from .progress import inference_progress


def load_members(models: list[str] | None, models_dir, cpu: bool) -> tuple[list, TtaSettings]:
    """Loaded runs for --model options with the TTA settings they were trained to predict with (off for a run
    trained without `--tta`; off too when an ensemble's members disagree), or the shipped reference default with
    its own TTA settings."""
    from ..infer.predict import load_run
    from ..runs.paths import reference_default

    if models:
        members = [load_run(m, models_dir, cpu=cpu) for m in models]
        own = {(m.tta.n, m.tta.beta) if m.tta.on else None for m in members}
        if len(own) > 1:
            err.print(note("note:", "yellow", "the runs were trained to predict with different TTA settings; "
                           "predicting without TTA (--tta and --tta-n choose)"), highlight=False, soft_wrap=True)
            return members, TtaSettings()
        return members, members[0].tta
    ref = reference_default()
    return [load_run(p, cpu=cpu, tta=ref["tta"]) for p in ref["paths"]], ref["tta"]


def _class_table(ids, probs, classes, chars, what: str) -> Table:
    t = Table(title=f"predictions ({len(ids):,} images; {what})")
    for c in TABLE_COLUMNS:
        t.add_column(c, justify="right" if c in ("class", "prob") else "left")
    for row in table_rows(ids, probs, classes, chars):
        t.add_row(*row)
    return t


@app.command("predict")
@friendly
def predict_cmd(inputs: list[str] = typer.Argument(..., help="MNIST-format images file (idx/npz), dataset name or "
                                                   "folder (its test split), folder of images, or image files."),
                model: Optional[list[str]] = typer.Option(None, "--model", "-m", help="Run name or folder; repeat "
                                                          "for an ensemble (default: the shipped reference default, reference/default.json). "
                                                          "An ONNX file from `kmnist-fa export` predicts alone, without torch, with its run's TTA settings."),
                tta: Optional[bool] = TtaOpt, tta_n: Optional[int] = TtaNOpt, method: Optional[str] = DefaultMethodOpt, seed: int = SeedOpt,
                invert: str = typer.Option("auto", "--invert", help="Image files: invert dark-on-light drawings "
                                           "(auto: decide from the border; yes; no)."),
                out_csv: Optional[Path] = typer.Option(None, "--out", help="Write the Kaggle submission "
                                                       "(Id,Category) here; `-`: to stdout."),
                probs_csv: Optional[Path] = typer.Option(None, "--probs", help="Also write per-class probabilities "
                                                         "(`-`: to stdout)."),
                models_dir: Optional[Path] = ModelsDirOpt, quiet: bool = QuietOpt, as_json: bool = JsonOpt,
                cpu: bool = CpuOpt):
    """Predict classes for images; several --model runs are ensembled. Writes Id,Category CSVs; says which runs,
    TTA settings and seed it used (table title, --json)."""
    from ..data.images import collect_inputs
    from ..infer.runtime import OnnxClassifier, onnx_model, override

    seed, say = checked_seed(seed), messages_to({"--out": out_csv, "--probs": probs_csv}, as_json)
    onnx = onnx_model(model)
    if onnx and method is not None:
        raise OptionError("--method: an ONNX file's runs are averaged inside its graph (`kmnist-fa export`); "
                          "for a vote, predict with the runs themselves")
    if onnx:
        clf = OnnxClassifier(onnx)
        settings = clf.settings(tta, tta_n)
        classes, chars, names = clf.classes, clf.chars, [m["name"] for m in clf.members]
    else:
        from ..infer.ensemble import check_members

        members, settings = load_members(model, models_dir, cpu)
        classes, chars, names = check_members(members), members[0].chars, [m.name for m in members]
        settings = override(settings, tta, tta_n, method)
    got = collect_inputs(inputs, invert)
    for e in got.errors:
        err.print(note("warning:", "yellow", e), highlight=False, soft_wrap=True)
    if len(got.images) == 0:
        raise OptionError("INPUT: no readable images")
    if onnx:
        probs = clf.predict_probs(got.images, tta=settings.on, n=settings.n, seed=seed)
    else:
        from ..infer.ensemble import combine, member_probs

        total = len(members) * len(got.images) * ((settings.n + 1) if settings.on else 1)
        with inference_progress(members, quiet, total):
            probs = combine(member_probs(members, got.images, settings.on, settings.n, seed), settings.method, seed)
    u = used(names, settings.on, settings.n, settings.beta, settings.method, seed, clf.name if onnx else None)
    if out_csv:
        write_submission(out_csv, got.ids, probs)
        say.print(f"wrote {out_csv} ({len(got.ids):,} rows; {describe(u)})")
    if probs_csv:
        write_probs(probs_csv, got.ids, probs, classes)
        say.print(f"wrote {probs_csv}")
    if as_json:
        print_json({"used": u, "rows": prediction_rows(got.ids, probs, classes, chars)})
    elif not out_csv and not probs_csv:
        show(_class_table(got.ids, probs, classes, chars, describe(u)))
    if got.errors:
        raise typer.Exit(1)


@app.command("ensemble")
@friendly
def ensemble_cmd(run_names: list[str] = typer.Argument(..., metavar="RUN...", help="Runs to combine."),
                 method: str = MethodOpt, seed: int = SeedOpt,
                 tta: bool = typer.Option(False, "--tta/--no-tta", help="fastai tta per member before combining."),
                 tta_n: Optional[int] = TtaNOpt, dataset: Optional[str] = DatasetOpt, data: Optional[Path] = DataOpt,
                 input_file: Optional[str] = typer.Option(None, "--input", help="Images to predict (default: the "
                                                          "dataset's test images)."),
                 out_csv: Optional[Path] = typer.Option(None, "--out", help="Write the ensemble's submission CSV "
                                                        "(`-`: to stdout)."),
                 probs_csv: Optional[Path] = typer.Option(None, "--probs", help="Also write its probabilities "
                                                          "(`-`: to stdout)."),
                 heatmap: Optional[Path] = typer.Option(None, "--heatmap", help="Pairwise disagreement heatmap PNG "
                                                        "(default: beside a --out file, else not drawn)."),
                 as_json: bool = JsonOpt,
                 models_dir: Optional[Path] = ModelsDirOpt, quiet: bool = QuietOpt,
                 cpu: bool = CpuOpt):
    """Combine runs (mean or vote, optional TTA): per-member accuracy and agreement, submission CSV."""
    from ..data.images import collect_inputs
    from ..infer.ensemble import analyse, disagreement_heatmap
    from ..infer.predict import load_run, run_data

    seed, say = checked_seed(seed), messages_to({"--out": out_csv, "--probs": probs_csv}, as_json)
    members = [load_run(r, models_dir, cpu=cpu) for r in run_names]
    d = run_data(members[0], data, dataset)
    if input_file:
        got = collect_inputs([input_file])
        images, labels, ids = got.images, got.labels, got.ids
    else:
        images, labels, ids = d.test_x, d.test_y, [str(i) for i in range(len(d.test_x))]
    with inference_progress(members, quiet):
        res = analyse(members, d, images, labels, method, tta, tta_n or members[0].tta.n, seed)
    if as_json:
        print_json({k: res[k] for k in ("rows", "names", "notes", "shared_split")}
                   | {"disagreement": res["disagreement"].tolist()})
    else:
        pct = lambda v: "-" if v is None else f"{v:.2%}"  # noqa: E731
        t = Table(title=f"ensemble of {len(members)} on {d.name}: {len(images):,} input images")
        for c in ("model", "arch", "valid acc", "test acc", "agrees with ensemble"):
            t.add_column(c, justify="left" if c in ("model", "arch") else "right")
        for r in res["rows"]:
            t.add_row(r["name"], r["arch"], pct(r["valid_acc"]), pct(r["test_acc"]), pct(r["agreement"]))
        show(t, say)
        m = Table(title="pairwise disagreement on the input images")
        m.add_column("")
        for name in res["names"]:
            m.add_column(name, justify="right")
        for name, row in zip(res["names"], res["disagreement"]):
            m.add_row(name, *(f"{v:.2%}" for v in row))
        show(m, say)
    for msg in res["notes"]:
        err.print(note("note:", "yellow", msg), highlight=False, soft_wrap=True)
    # beside --out only when that is a file (a new or a regular one): not next to /dev/null or a FIFO
    if heatmap or (out_csv and not is_stdout(out_csv) and (Path(out_csv).is_file() or not Path(out_csv).exists())):
        hm = heatmap or Path(out_csv).with_name(Path(out_csv).stem + "_disagreement.png")
        disagreement_heatmap(hm, res["names"], res["disagreement"])
        say.print(f"wrote {hm}")
    if out_csv:
        write_submission(out_csv, ids, res["probs"])
        say.print(f"wrote {out_csv} ({len(ids):,} rows)")
    if probs_csv:
        write_probs(probs_csv, ids, res["probs"], members[0].classes)
        say.print(f"wrote {probs_csv}")
