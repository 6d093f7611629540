"""`kmnist-fa`: a thin typer layer over the Python API (data, learner, runs).

Each command parses options, calls one API function and renders the result with
rich. User errors (`KmnistError`) print one line on stderr and exit with code 2.
"""
from __future__ import annotations

import functools
import json
import os
import warnings
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from . import __version__
from .errors import KmnistError, OptionError

warnings.filterwarnings("ignore", category=FutureWarning, module=r"torch\.jit")
os.environ.setdefault("MPLBACKEND", "Agg")  # the CLI only writes image files; never open a window

out = Console()
err = Console(stderr=True)

app = typer.Typer(name="kmnist-fa", no_args_is_help=True, add_completion=False, rich_markup_mode="rich",
                  help="fastai toolkit for Kuzushiji-MNIST and the MNIST family: data, training, lr-find, runs.")
data_app = typer.Typer(no_args_is_help=True, help="Inspect, download and preview datasets.")
models_app = typer.Typer(invoke_without_command=True, help="List saved runs, or show one (`models show NAME`).")
app.add_typer(data_app, name="data")
app.add_typer(models_app, name="models")


def friendly(fn):
    """Turn KmnistError into one line on stderr and exit code 2 (no traceback)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except KmnistError as e:
            err.print(f"[bold red]error:[/] {e}", highlight=False, soft_wrap=True, markup=True)
            raise typer.Exit(2) from None

    return wrapper


def _version(value: bool):
    if value:
        out.print(f"kmnist-fa {__version__}")
        raise typer.Exit()


@app.callback()
def main(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                      help="Print the version and exit.")):
    """fastai toolkit for Kuzushiji-MNIST and the MNIST family."""


# ---------------------------------------------------------------- shared options

DatasetOpt = typer.Option(None, "--dataset", help="Named dataset: kmnist, fashion, mnist, k49 (MD5s enforced).")
DataOpt = typer.Option(None, "--data", help="Folder of MNIST-format files (idx or npz); overrides env KMNIST_FA_DATA.")
ModelsDirOpt = typer.Option(None, "--models-dir", help="Where runs live (default: env KMNIST_FA_MODELS or ./models).")


# ---------------------------------------------------------------- data

@data_app.command("info")
@friendly
def data_info(name: Optional[str] = typer.Argument(None, help="Named dataset (default kmnist, or the --data folder)."),
              data: Optional[Path] = DataOpt):
    """Files, counts, per-class counts, MD5 status and pixel statistics."""
    from .data import image_stats
    from .datasets import load_dataset

    d = load_dataset(name, data)
    t = Table(title=f"{d.name} ({d.root})")
    for c in ("role", "file", "images", "md5", "status"):
        t.add_column(c)
    counts = {"train_images": len(d.train_x), "train_labels": len(d.train_y), "test_images": len(d.test_x),
              "test_labels": None if d.test_y is None else len(d.test_y)}
    for role, f in d.files.items():
        t.add_row(role, Path(f["path"]).name, f"{counts[role]:,}", f["md5"], f["status"])
    if d.test_y is None:
        t.add_row("test_labels", "-", "-", "-", "absent (unlabelled test set)")
    out.print(t)
    c = Table(title="images per class")
    for col in ("class", "name", "train", "test"):
        c.add_column(col, justify="right" if col in ("train", "test") else "left")
    for i in range(d.c):
        test = "-" if d.test_y is None else f"{int((d.test_y == i).sum()):,}"
        c.add_row(str(i), d.label(i), f"{int((d.train_y == i).sum()):,}", test)
    out.print(c)
    mean, std = image_stats(d.train_x)
    out.print(f"train pixels: mean {mean:.4f}, std {std:.4f} (in [0, 1])")


@data_app.command("download")
@friendly
def data_download(name: str = typer.Argument("kmnist", help="kmnist, fashion, mnist or k49."),
                  data: Optional[Path] = typer.Option(None, "--data", help="Folder to download into "
                                                      "(default: fastai's data folder, ~/.fastai/data/NAME)."),
                  mirror: Optional[str] = typer.Option(None, "--mirror", help="Base URL to fetch from instead of "
                                                       "the official mirrors.")):
    """Download a named dataset with MD5 checks; resumes partial files, writes atomically."""
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn

    from .datasets import download

    with Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                  console=err) as prog:
        tasks = {}

        def report(fname, done, total):
            if fname not in tasks:
                tasks[fname] = prog.add_task(fname, total=total)
            prog.update(tasks[fname], completed=done, total=total)

        root = download(name, data, mirror, report)
    out.print(f"{name}: files verified in {root}")


@data_app.command("show")
@friendly
def data_show(name: Optional[str] = typer.Argument(None, help="Named dataset (default kmnist, or the --data folder)."),
              data: Optional[Path] = DataOpt,
              aug: str = typer.Option("light", "--aug", help="Augmentation preset: none, light, heavy."),
              n: int = typer.Option(32, "--n", min=1, max=256, help="Number of images."),
              seed: int = typer.Option(42, "--seed", help="Random seed (split and augmentation)."),
              out_file: Path = typer.Option(Path("batch.png"), "--out", help="PNG file to write.")):
    """Save a grid of training images as the model sees them, to check an augmentation preset."""
    from fastai.torch_core import set_seed

    from .data import make_dls, sample_batch
    from .datasets import load_dataset
    from .plots import class_labels, image_grid, save_fig
    from .splits import SplitSpec

    set_seed(seed)
    d = load_dataset(name, data)
    dls = make_dls(d, SplitSpec(seed=seed), aug=aug, device="cpu")
    imgs, ys = sample_batch(dls, n)
    labels = class_labels(d.classes, d.chars)
    save_fig(image_grid(imgs, [labels[y] for y in ys]), out_file)
    out.print(f"wrote {out_file} ({n} images, aug={aug})")


# ---------------------------------------------------------------- architectures

@app.command("archs")
def archs():
    """List the registered architectures with their parameter counts."""
    from .models import ARCHS, n_params

    t = Table(title="architectures")
    for c in ("name", "params", "default bn", "default dropout", "description"):
        t.add_column(c, justify="right" if c == "params" else "left")
    for a in ARCHS.values():
        t.add_row(a.name, f"{n_params(a.build()):,}", str(a.default_bn), str(a.default_dropout), a.description)
    out.print(t)


# ---------------------------------------------------------------- training

def _config(arch: str | None, recipe: str | None, opts: dict):
    from .recipes import resolve_config

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
    from .learner import resume as resume_run
    from .learner import train
    from .progress import RichProgress
    from .runs import check_name

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
    from .recipes import list_recipes

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
    from .learner import build_learner, prepare, suggest_lrs
    from .progress import RichProgress

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

    from . import sweep as sw
    from .runs import check_name, models_dir as mdir

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
        from .atomic import write_text

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


# ---------------------------------------------------------------- prediction

def _members(models: list[str] | None, models_dir, cpu: bool) -> tuple[list, dict]:
    """Loaded runs for --model options, or the shipped reference ensemble with its TTA settings."""
    from .inference import load_run
    from .runs import reference_default

    if models:
        return [load_run(m, models_dir, cpu=cpu) for m in models], {"tta": False}
    ref = reference_default()
    return [load_run(p, cpu=cpu, tta_aug=ref.get("tta_aug")) for p in ref["paths"]], ref


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


TtaOpt = typer.Option(None, "--tta/--no-tta", help="Test-time augmentation (fastai tta) per model "
                      "(default: on for the shipped reference ensemble, off for --model runs).")
TtaNOpt = typer.Option(None, "--tta-n", min=1, help="Augmented passes per model with --tta, plus the clean pass "
                       "(default 4; the reference ensemble's own setting when it is used).")
MethodOpt = typer.Option("mean", "--method", help="Combine models by 'mean' of probabilities or majority 'vote'.")
SeedOpt = typer.Option(42, "--seed", help="Seed for vote tie-breaking.")


@app.command("predict")
@friendly
def predict_cmd(inputs: list[str] = typer.Argument(..., help="MNIST-format images file (idx/npz), dataset name or "
                                                   "folder (its test split), folder of images, or image files."),
                model: Optional[list[str]] = typer.Option(None, "--model", "-m", help="Run name or folder; repeat "
                                                          "for an ensemble (default: the shipped reference ensemble)."),
                tta: Optional[bool] = TtaOpt, tta_n: Optional[int] = TtaNOpt, method: str = MethodOpt, seed: int = SeedOpt,
                invert: str = typer.Option("auto", "--invert", help="Image files: invert dark-on-light drawings "
                                           "(auto: decide from the border; yes; no)."),
                out_csv: Optional[Path] = typer.Option(None, "--out", help="Write the Kaggle submission "
                                                       "(Id,Category) here."),
                probs_csv: Optional[Path] = typer.Option(None, "--probs", help="Also write per-class probabilities."),
                models_dir: Optional[Path] = ModelsDirOpt,
                cpu: bool = typer.Option(False, "--cpu", help="Use the CPU even when CUDA is available.")):
    """Predict classes for images; several --model runs are ensembled. Writes Id,Category CSVs."""
    from .ensemble import check_members, combine, member_probs, write_probs, write_submission
    from .images import collect_inputs

    members, defaults = _members(model, models_dir, cpu)
    classes = check_members(members)
    use_tta = tta if tta is not None else defaults["tta"]
    tta_n = tta_n or defaults.get("tta_n", 4)
    got = collect_inputs(inputs, invert)
    for e in got.errors:
        err.print(f"[yellow]warning:[/] {e}", highlight=False, soft_wrap=True)
    if len(got.images) == 0:
        raise OptionError("INPUT: no readable images")
    probs = combine(member_probs(members, got.images, use_tta, tta_n), method, seed)
    if out_csv:
        write_submission(out_csv, got.ids, probs)
        out.print(f"wrote {out_csv} ({len(got.ids):,} rows, {len(members)} model(s), "
                  f"{'TTA' if use_tta else 'no TTA'})")
    if probs_csv:
        write_probs(probs_csv, got.ids, probs, classes)
        out.print(f"wrote {probs_csv}")
    if not out_csv and not probs_csv:
        out.print(_class_table(got.ids, probs, members))
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
                 as_json: bool = typer.Option(False, "--json", help="Print the table as JSON."),
                 models_dir: Optional[Path] = ModelsDirOpt,
                 cpu: bool = typer.Option(False, "--cpu", help="Use the CPU even when CUDA is available.")):
    """Combine runs (mean or vote, optional TTA): per-member accuracy and agreement, submission CSV."""
    from .ensemble import analyse, disagreement_heatmap, write_probs, write_submission
    from .images import collect_inputs
    from .inference import load_run, run_data

    members = [load_run(r, models_dir, cpu=cpu) for r in run_names]
    d = run_data(members[0], data, dataset)
    if input_file:
        got = collect_inputs([input_file])
        images, labels, ids = got.images, got.labels, got.ids
    else:
        images, labels, ids = d.test_x, d.test_y, [str(i) for i in range(len(d.test_x))]
    res = analyse(members, d, images, labels, method, tta, tta_n or 4, seed)
    if as_json:
        out.print_json(json.dumps({k: res[k] for k in ("rows", "names", "notes", "shared_split")}
                                  | {"disagreement": res["disagreement"].tolist()}))
    else:
        pct = lambda v: "-" if v is None else f"{v:.2%}"  # noqa: E731
        t = Table(title=f"ensemble of {len(members)} on {d.name}: {len(images):,} input images")
        for c in ("model", "arch", "valid acc", "test acc", "agrees with ensemble"):
            t.add_column(c, justify="left" if c in ("model", "arch") else "right")
        for r in res["rows"]:
            t.add_row(r["name"], r["arch"], pct(r["valid_acc"]), pct(r["test_acc"]), pct(r["agreement"]))
        out.print(t)
        m = Table(title="pairwise disagreement on the input images")
        m.add_column("")
        for name in res["names"]:
            m.add_column(name, justify="right")
        for name, row in zip(res["names"], res["disagreement"]):
            m.add_row(name, *(f"{v:.2%}" for v in row))
        out.print(m)
    for note in res["notes"]:
        err.print(f"[yellow]note:[/] {note}", highlight=False, soft_wrap=True)
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


@app.command("serve")
@friendly
def serve_cmd(model: Optional[list[str]] = typer.Argument(None, metavar="[RUN...]", help="Runs to serve "
                                                          "(default: the shipped reference model)."),
              host: str = typer.Option("127.0.0.1", "--host", help="Interface to bind (loopback by default)."),
              port: int = typer.Option(7860, "--port", min=1, max=65535, help="TCP port."),
              tta: Optional[bool] = TtaOpt, tta_n: Optional[int] = TtaNOpt, method: str = MethodOpt,
              models_dir: Optional[Path] = ModelsDirOpt,
              cpu: bool = typer.Option(False, "--cpu", help="Use the CPU even when CUDA is available.")):
    """Web demo: draw a character (or upload an image) and watch the top-3 guesses. Needs the demo extra."""
    try:
        import uvicorn
    except ImportError:
        raise OptionError('serve needs the demo extra: pip install -e ".[demo]"') from None
    from .serve import Predictor, create_app

    members, defaults = _members(model, models_dir, cpu)
    predictor = Predictor(members, tta if tta is not None else defaults["tta"], tta_n or defaults.get("tta_n", 4),
                          method)
    err.print(f"serving {', '.join(m.name for m in members)} on http://{host}:{port}/ (Ctrl-C stops)",
              highlight=False)
    uvicorn.run(create_app(predictor), host=host, port=port, log_level="warning")


# ---------------------------------------------------------------- interpretation

SplitOpt = typer.Option("valid", "--split", help="valid: the run's own validation split; test: the dataset's "
                        "labelled test set.")


@app.command("interpret")
@friendly
def interpret_cmd(run_name: str = typer.Argument(..., metavar="RUN", help="Run name or folder."),
                  dataset: Optional[str] = DatasetOpt, data: Optional[Path] = DataOpt, split: str = SplitOpt,
                  tta: bool = typer.Option(False, "--tta/--no-tta", help="Predict with fastai tta."),
                  tta_n: Optional[int] = TtaNOpt,
                  top_k: int = typer.Option(16, "--top-k", min=1, max=64, help="Images in the top-losses grid."),
                  out_dir: Optional[Path] = typer.Option(None, "--out", help="Output folder "
                                                         "(default: models/RUN/interpret/)."),
                  models_dir: Optional[Path] = ModelsDirOpt,
                  cpu: bool = typer.Option(False, "--cpu", help="Use the CPU even when CUDA is available.")):
    """Confusion matrix, top losses, most-confused pairs, per-class metrics and an HTML report."""
    from .inference import load_run, run_data
    from .interpret import interpret, write_interpretation

    run = load_run(run_name, models_dir, cpu=cpu)
    d = run_data(run, data, dataset)
    interp, notes = interpret(run, d, split, tta, tta_n or 4)
    target = out_dir or run.path / "interpret"
    res = write_interpretation(run, interp, target, split, tta, notes, top_k)
    for note in notes:
        err.print(f"[yellow]note:[/] {note}", highlight=False, soft_wrap=True)
    t = Table(title="most confused (actual -> predicted)")
    for c in ("actual", "predicted", "count"):
        t.add_column(c, justify="right" if c == "count" else "left")
    for r in res["most_confused"][:15]:
        t.add_row(r["actual"], r["predicted"], str(r["count"]))
    out.print(t)
    p = Table(title=f"per class ({split}, {len(interp.targs):,} images{', TTA' if tta else ''})")
    for c in ("class", "precision", "recall", "f1", "support"):
        p.add_column(c, justify="left" if c == "class" else "right")
    for r in res["per_class"]:
        p.add_row(r["name"], f"{r['precision']:.3f}", f"{r['recall']:.3f}", f"{r['f1']:.3f}", str(r["support"]))
    out.print(p)
    out.print(f"accuracy {res['accuracy']:.4f}, macro-F1 {res['macro_f1']:.4f}; wrote confusion.png, "
              f"top_losses.png, most_confused.csv, per_class.csv, report.html in {target}")


@app.command("evaluate")
@friendly
def evaluate_cmd(run_names: list[str] = typer.Argument(..., metavar="RUN...", help="Runs to evaluate."),
                 dataset: Optional[str] = DatasetOpt, data: Optional[Path] = DataOpt, split: str = SplitOpt,
                 tta: bool = typer.Option(False, "--tta/--no-tta", help="Predict with fastai tta."),
                 tta_n: Optional[int] = TtaNOpt,
                 as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
                 models_dir: Optional[Path] = ModelsDirOpt,
                 cpu: bool = typer.Option(False, "--cpu", help="Use the CPU even when CUDA is available.")):
    """Accuracy, loss and error count of runs on a split; flags runs trained on other data or splits."""
    from dataclasses import asdict

    from .inference import load_run, run_data
    from .interpret import evaluate

    results, splits = [], set()
    for name in run_names:
        run = load_run(name, models_dir, cpu=cpu)
        results.append(evaluate(run, run_data(run, data, dataset), split, tta, tta_n or 4))
        splits.add((run.meta["data"]["fingerprint"], run.split()))
    if split == "valid" and len(splits) > 1:
        for r in results:
            r.flags.append("runs were validated on different splits: accuracies are not comparable")
    if as_json:
        out.print_json(json.dumps([asdict(r) for r in results]))
        return
    t = Table(title=f"evaluation on the {split} split{' with TTA' if tta else ''}")
    for c in ("run", "arch", "images", "accuracy", "loss", "errors", "flags"):
        t.add_column(c, justify="right" if c in ("images", "accuracy", "loss", "errors") else "left")
    for r in results:
        t.add_row(r.name, r.arch, f"{r.n:,}", f"{r.accuracy:.4f}", f"{r.loss:.4f}", str(r.errors),
                  "[yellow]" + "; ".join(r.flags) + "[/]" if r.flags else "")
    out.print(t)


# ---------------------------------------------------------------- runs

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
    from .runs import list_runs, models_dir as mdir

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
    from .runs import read_run, run_path

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
    from .transfer import lineage

    rows += [("lineage", " <- ".join([meta["name"], *lineage(meta)]))] if meta.get("parent") else []
    rows += [(f"option {k}", str(v)) for k, v in meta["config"].items() if k != "extra"]
    for k, v in rows:
        t.add_row(k, v)
    out.print(t)
