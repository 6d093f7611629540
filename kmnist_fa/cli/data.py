"""`kmnist-fa data info|download|show`."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from .common import DataOpt, JsonOpt, checked_seed, data_app, err, friendly, out, print_json, show


@data_app.command("info")
@friendly
def data_info(name: Optional[str] = typer.Argument(None, help="Named dataset (default kmnist, or the --data folder)."),
              data: Optional[Path] = DataOpt, as_json: bool = JsonOpt):
    """Files, counts, per-class counts, MD5 status and pixel statistics."""
    from ..data.datasets import load_dataset
    from ..data.stats import image_stats

    d = load_dataset(name, data)
    if as_json:
        mean, std = image_stats(d.train_x)
        print_json({**d.provenance(), "train_images": len(d.train_x), "test_images": len(d.test_x),
                    "test_labelled": d.test_y is not None, "pixel_mean": mean, "pixel_std": std,
                    "classes": [{"class": i, "name": d.classes[i], "char": d.chars[i] if d.chars else None,
                                 "train": int((d.train_y == i).sum()),
                                 "test": None if d.test_y is None else int((d.test_y == i).sum())}
                                for i in range(d.c)]})
        return
    t = Table(title=f"{d.name} ({d.root})")
    for c in ("role", "file", "images", "md5", "status"):
        t.add_column(c)
    counts = {"train_images": len(d.train_x), "train_labels": len(d.train_y), "test_images": len(d.test_x),
              "test_labels": None if d.test_y is None else len(d.test_y)}
    for role, f in d.files.items():
        t.add_row(role, Path(f["path"]).name, f"{counts[role]:,}", f["md5"], f["status"])
    if d.test_y is None:
        t.add_row("test_labels", "-", "-", "-", "absent (unlabelled test set)")
    show(t)
    c = Table(title="images per class")
    for col in ("class", "name", "train", "test"):
        c.add_column(col, justify="right" if col in ("train", "test") else "left")
    for i in range(d.c):
        test = "-" if d.test_y is None else f"{int((d.test_y == i).sum()):,}"
        c.add_row(str(i), d.label(i), f"{int((d.train_y == i).sum()):,}", test)
    show(c)
    mean, std = image_stats(d.train_x)
    out.print(f"train pixels: mean {mean:.4f}, std {std:.4f} (in [0, 1])")


@data_app.command("download")
@friendly
def data_download(name: str = typer.Argument("kmnist", help="kmnist, fashion, mnist or k49."),
                  data: Optional[Path] = typer.Option(None, "--data", help="Folder to download into "
                                                      "(default: fastai's data folder, ~/.fastai/data/NAME)."),
                  mirror: Optional[str] = typer.Option(None, "--mirror", help="Base URL to fetch from instead of "
                                                       "the official mirrors (http://USER:PASSWORD@HOST/... for "
                                                       "one that needs a login).")):
    """Download a named dataset, checked by its published MD5s (or, for K49, counts and labels); resumes
    partial files, writes atomically, removes a file that fails."""
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TextColumn,
        TransferSpeedColumn,
    )

    from ..data.datasets import download, get_spec

    with Progress(TextColumn("{task.description}", markup=False), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                  console=err) as prog:
        tasks = {}

        def report(fname, done, total):
            if fname not in tasks:
                tasks[fname] = prog.add_task(fname, total=total)
            prog.update(tasks[fname], completed=done, total=total)

        root = download(name, data, mirror, report)
    how = "published MD5s" if get_spec(name).md5 else "published counts and label range; no MD5s are published"
    out.print(f"{name}: files verified ({how}) in {root}")


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

    from ..config.options import SplitSpec
    from ..core.plots import class_labels, image_grid, save_fig
    from ..data.datasets import load_dataset
    from ..data.pipeline import make_dls, sample_batch

    set_seed(checked_seed(seed))
    d = load_dataset(name, data)
    dls = make_dls(d, SplitSpec(seed=seed), aug=aug, device="cpu")
    imgs, ys = sample_batch(dls, n)
    labels = class_labels(d.classes, d.chars)
    save_fig(image_grid(imgs, [labels[y] for y in ys]), out_file)
    out.print(f"wrote {out_file} ({n} images, aug={aug})")
