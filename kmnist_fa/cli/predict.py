"""`kmnist-fa predict|ensemble`, and the runs they use by default (`members`)."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from ..config.options import TTA_N, TtaSettings
from ..core.errors import OptionError
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
    err,
    friendly,
    note,
    out,
    print_json,
    show,
)
from .progress import inference_progress


def load_members(models: list[str] | None, models_dir, cpu: bool) -> tuple[list, TtaSettings]:
    """Loaded runs for --model options (TTA off unless asked), or the shipped reference default with its own
    TTA settings."""
    from ..infer.predict import load_run
    from ..runs.paths import reference_default

    if models:
        return [load_run(m, models_dir, cpu=cpu) for m in models], TtaSettings()
    ref = reference_default()
    return [load_run(p, cpu=cpu, tta=ref["tta"]) for p in ref["paths"]], ref["tta"]


def _class_table(ids, probs, members, limit: int = 40) -> Table:
    classes, chars = members[0].classes, members[0].chars
    t = Table(title=f"predictions ({len(ids):,} images)")
    for c in ("Id", "class", "char", "name", "prob", "2nd"):
        t.add_column(c, justify="right" if c in ("class", "prob") else "left")
    top2 = probs.topk(min(2, probs.shape[1]), dim=1)
    for i, (rid, vals, idx) in enumerate(zip(ids, top2.values.tolist(), top2.indices.tolist())):
        if i == limit:
            t.add_row(f"... {len(ids) - limit:,} more (use --out)", "", "", "", "", "")
            break
        second = f"{classes[idx[1]]} {vals[1]:.1%}" if len(idx) > 1 else ""
        t.add_row(rid, str(idx[0]), chars[idx[0]] if chars else "", classes[idx[0]], f"{vals[0]:.1%}", second)
    return t


@app.command("predict")
@friendly
def predict_cmd(inputs: list[str] = typer.Argument(..., help="MNIST-format images file (idx/npz), dataset name or "
                                                   "folder (its test split), folder of images, or image files."),
                model: Optional[list[str]] = typer.Option(None, "--model", "-m", help="Run name or folder; repeat "
                                                          "for an ensemble (default: the shipped reference default, reference/default.json)."),
                tta: Optional[bool] = TtaOpt, tta_n: Optional[int] = TtaNOpt, method: Optional[str] = DefaultMethodOpt, seed: int = SeedOpt,
                invert: str = typer.Option("auto", "--invert", help="Image files: invert dark-on-light drawings "
                                           "(auto: decide from the border; yes; no)."),
                out_csv: Optional[Path] = typer.Option(None, "--out", help="Write the Kaggle submission "
                                                       "(Id,Category) here."),
                probs_csv: Optional[Path] = typer.Option(None, "--probs", help="Also write per-class probabilities."),
                models_dir: Optional[Path] = ModelsDirOpt, quiet: bool = QuietOpt, as_json: bool = JsonOpt,
                cpu: bool = CpuOpt):
    """Predict classes for images; several --model runs are ensembled. Writes Id,Category CSVs."""
    import torch

    from ..data.images import collect_inputs
    from ..infer.ensemble import (
        check_members,
        combine,
        member_probs,
        write_probs,
        write_submission,
    )

    onnx = [m for m in model or [] if m.endswith(".onnx")]
    if onnx and len(model) > 1:
        raise OptionError("--model FILE.onnx: predicts alone (export several runs into one graph with "
                          "`kmnist-fa export RUN RUN`)")
    if onnx:
        from ..infer.runtime import OnnxClassifier

        members, use_tta, tta_n = [OnnxClassifier(onnx[0])], bool(tta), tta_n or TTA_N
        classes = members[0].classes
    else:
        members, settings = load_members(model, models_dir, cpu)
        classes = check_members(members)
        use_tta = tta if tta is not None else settings.on
        tta_n, method = tta_n or settings.n, method or settings.method
    got = collect_inputs(inputs, invert)
    for e in got.errors:
        err.print(note("warning:", "yellow", e), highlight=False, soft_wrap=True)
    if len(got.images) == 0:
        raise OptionError("INPUT: no readable images")
    if onnx:
        probs = torch.from_numpy(members[0].predict_probs(got.images, tta_n=tta_n if use_tta else 0, seed=seed))
    else:
        total = len(members) * len(got.images) * ((tta_n + 1) if use_tta else 1)
        with inference_progress(members, quiet, total):
            probs = combine(member_probs(members, got.images, use_tta, tta_n, seed), method, seed)
    if out_csv:
        write_submission(out_csv, got.ids, probs)
        out.print(f"wrote {out_csv} ({len(got.ids):,} rows, {len(members)} model(s), "
                  f"{'TTA' if use_tta else 'no TTA'})")
    if probs_csv:
        write_probs(probs_csv, got.ids, probs, classes)
        out.print(f"wrote {probs_csv}")
    if as_json:
        chars = members[0].chars
        print_json([{"id": i, "class": int(c), "name": classes[c], "char": chars[c] if chars else None,
                     "prob": round(float(p[c]), 6)} for i, p, c in zip(got.ids, probs, probs.argmax(1).tolist())])
    elif not out_csv and not probs_csv:
        show(_class_table(got.ids, probs, members))
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
                 out_csv: Optional[Path] = typer.Option(None, "--out", help="Write the ensemble's submission CSV."),
                 probs_csv: Optional[Path] = typer.Option(None, "--probs", help="Also write its probabilities."),
                 heatmap: Optional[Path] = typer.Option(None, "--heatmap", help="Pairwise disagreement heatmap PNG "
                                                        "(default: beside --out, else not drawn)."),
                 as_json: bool = JsonOpt,
                 models_dir: Optional[Path] = ModelsDirOpt, quiet: bool = QuietOpt,
                 cpu: bool = CpuOpt):
    """Combine runs (mean or vote, optional TTA): per-member accuracy and agreement, submission CSV."""
    from ..data.images import collect_inputs
    from ..infer.ensemble import (
        analyse,
        disagreement_heatmap,
        write_probs,
        write_submission,
    )
    from ..infer.predict import load_run, run_data

    members = [load_run(r, models_dir, cpu=cpu) for r in run_names]
    d = run_data(members[0], data, dataset)
    if input_file:
        got = collect_inputs([input_file])
        images, labels, ids = got.images, got.labels, got.ids
    else:
        images, labels, ids = d.test_x, d.test_y, [str(i) for i in range(len(d.test_x))]
    with inference_progress(members, quiet):
        res = analyse(members, d, images, labels, method, tta, tta_n or TTA_N, seed)
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
        show(t)
        m = Table(title="pairwise disagreement on the input images")
        m.add_column("")
        for name in res["names"]:
            m.add_column(name, justify="right")
        for name, row in zip(res["names"], res["disagreement"]):
            m.add_row(name, *(f"{v:.2%}" for v in row))
        show(m)
    for msg in res["notes"]:
        err.print(note("note:", "yellow", msg), highlight=False, soft_wrap=True)
    if heatmap or out_csv:
        hm = heatmap or Path(out_csv).with_name(Path(out_csv).stem + "_disagreement.png")
        disagreement_heatmap(hm, res["names"], res["disagreement"])
        out.print(f"wrote {hm}")
    if out_csv:
        write_submission(out_csv, ids, res["probs"])
        out.print(f"wrote {out_csv} ({len(ids):,} rows)")
    if probs_csv:
        write_probs(probs_csv, ids, res["probs"], members[0].classes)
        out.print(f"wrote {probs_csv}")
