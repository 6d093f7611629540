"""Interpretation and evaluation of saved runs: confusion, top losses, per-class metrics, HTML report.

Built on fastai's `ClassificationInterpretation`, with one change that matters for a
CLI: fastai re-runs `get_preds` in every method (confusion_matrix, most_confused,
the report), so `CachedInterpretation` computes predictions once (optionally with
TTA) and every table and plot reuses them.
"""
from __future__ import annotations

import base64
import html
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from fastai.interpret import ClassificationInterpretation

from ..config.options import TTA_N
from ..config.shown import shown_options
from ..core.atomic import make_folder, write_csv, write_text
from ..core.errors import DataError, OptionError
from ..core.plots import class_labels, image_grid, plot_confusion_matrix, save_fig
from ..data.datasets import MnistData
from ..data.pipeline import array_dl
from .predict import LoadedRun, predict_probs, validation_set

SPLITS = ("valid", "test")


class CachedInterpretation(ClassificationInterpretation):
    """fastai's ClassificationInterpretation over predictions computed once."""

    def __init__(self, run: LoadedRun, images: np.ndarray, labels: np.ndarray, probs: torch.Tensor):
        self.images, self.labels_np = images, np.asarray(labels)
        self.preds, self.targs = probs.float(), torch.as_tensor(self.labels_np, dtype=torch.long)
        losses = -torch.log(self.preds[torch.arange(len(self.targs)), self.targs].clamp_min(1e-12))
        super().__init__(run.learn, array_dl(run.learn.dls, images, labels), losses)

    @property
    def decoded(self) -> torch.Tensor:
        return self.preds.argmax(1)

    def confusion_matrix(self) -> np.ndarray:
        """Rows: actual class, columns: predicted class (fastai's convention)."""
        n = len(self.vocab)
        cm = np.zeros((n, n), dtype=np.int64)
        np.add.at(cm, (self.labels_np, self.decoded.numpy()), 1)
        return cm

    def per_class(self) -> list[dict]:
        cm = self.confusion_matrix()
        rows = []
        for i, name in enumerate(self.vocab):
            tp, pred, support = cm[i, i], cm[:, i].sum(), cm[i].sum()
            p = tp / pred if pred else 0.0
            r = tp / support if support else 0.0
            rows.append({"class": i, "name": str(name), "precision": float(p), "recall": float(r),
                         "f1": float(2 * p * r / (p + r)) if p + r else 0.0, "support": int(support)})
        return rows

    @property
    def accuracy(self) -> float:
        return float((self.decoded.numpy() == self.labels_np).mean())


def labelled_split(run: LoadedRun, data: MnistData, split: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Images and labels of `split`, with notes on anything that makes the numbers untrustworthy."""
    if split not in SPLITS:
        raise OptionError(f"--split must be one of {', '.join(SPLITS)}, got {split!r}")
    if split == "valid":
        x, y, notes = validation_set(run, data)
        if len(x) == 0:
            raise OptionError(f"--split valid: run {run.name} was trained with --full and has no validation images; "
                              "use --split test on a labelled test set")
        return x, y, notes
    if data.test_y is None:
        raise DataError(f"--split test: the test set of {data.name} ({data.root}) has no labels; "
                        "evaluating needs labels — use --split valid")
    notes = []
    if data.fingerprint != run.record.data.fingerprint:
        notes.append(f"{run.name}: trained on {run.record.data.name}, not {data.name}; "
                     "whether its training images overlap these test images is unknown")
    return data.test_x, data.test_y, notes


def interpret(run: LoadedRun, data: MnistData, split: str = "valid", tta: bool = False, n: int = TTA_N
              ) -> tuple[CachedInterpretation, list[str]]:
    x, y, notes = labelled_split(run, data, split)
    return CachedInterpretation(run, x, y, predict_probs(run, x, tta=tta, n=n)), notes


@dataclass
class Evaluation:
    name: str
    arch: str
    split: str
    n: int
    accuracy: float
    loss: float
    errors: int
    flags: list[str]


def evaluate(run: LoadedRun, data: MnistData, split: str = "valid", tta: bool = False, n: int = TTA_N) -> Evaluation:
    interp, notes = interpret(run, data, split, tta, n)
    return Evaluation(run.name, run.record.arch, split, len(interp.targs), interp.accuracy,
                      float(interp.losses.mean()), int((interp.decoded != interp.targs).sum()), notes)


# --------------------------------------------------------------------------- pictures

def plot_confusion(interp: CachedInterpretation, labels: list[str]):
    """Counts and row-normalised (recall) side by side."""
    return plot_confusion_matrix(interp.confusion_matrix(), labels)


def plot_top_losses(interp: CachedInterpretation, labels: list[str], k: int = 16):
    losses, idx = interp.top_losses(min(k, len(interp.losses)))
    titles = []
    for loss, i in zip(losses.tolist(), idx.tolist()):
        pred, actual = int(interp.decoded[i]), int(interp.targs[i])
        titles.append(f"{labels[pred]} / {labels[actual]}\n{loss:.2f} / {float(interp.preds[i, pred]):.2f}")
    return image_grid(interp.images[idx.numpy()], titles, ncols=min(8, len(titles)), cell=1.5, title_size=8,
                      suptitle="predicted / actual, loss / probability")


def _png_data_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(Path(path).read_bytes()).decode()


def _table(rows: list[dict], cols: list[str]) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in cols)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(_cell(r[c]))}</td>" for c in cols) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _cell(v) -> str:
    return f"{v:.4f}" if isinstance(v, float) else str(v)


def write_report(out_dir: Path, run: LoadedRun, interp: CachedInterpretation, split: str, tta: bool,
                 notes: list[str], images: dict[str, Path], most: list[dict], per_class: list[dict]) -> Path:
    """One self-contained HTML page: options, curves, metrics, confusion, top losses (images inlined)."""
    rec = run.record
    opts = [{"option": k, "value": v} for k, v in shown_options(rec.config).items()]
    macro_f1 = float(np.mean([r["f1"] for r in per_class]))
    pics = "".join(f"<h2>{html.escape(t)}</h2><img src='{_png_data_uri(p)}' alt='{html.escape(t)}'>"
                   for t, p in images.items())
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>kmnist-fa run {html.escape(rec.name)}</title>
<style>body{{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}}
table{{border-collapse:collapse;margin:1em 0}}td,th{{border:1px solid #ccc;padding:3px 8px;text-align:right}}
th{{background:#eee}}img{{max-width:100%}}.note{{color:#a40}}</style></head><body>
<h1>Run {html.escape(rec.name)}: {html.escape(rec.arch)}</h1>
<p>{html.escape(split)} split of {html.escape(rec.data.name)}, {len(interp.targs):,} images{', with TTA' if tta else ''}:
<b>accuracy {interp.accuracy:.4f}</b>, macro-F1 {macro_f1:.4f}, {int((interp.decoded != interp.targs).sum())} errors.
Trained {rec.epochs_done} epochs in {rec.wall_time_s:.0f}s on {html.escape(rec.device)}, learning rate {rec.lr:.3g}
({html.escape(rec.lr_source)}).</p>
{''.join(f'<p class="note">note: {html.escape(n)}</p>' for n in notes)}
{pics}
<h2>Most confused (actual → predicted)</h2>{_table(most, ['actual', 'predicted', 'count'])}
<h2>Per class</h2>{_table(per_class, ['class', 'name', 'precision', 'recall', 'f1', 'support'])}
<h2>Options</h2><p>Those that shaped the run: unset ones and those of features it did not use are left out
(run.json has them all).</p>{_table(opts, ['option', 'value'])}
<h2>History</h2>{_table(rec.history, list((rec.history or [{}])[0].keys()))}
</body></html>
"""
    return write_text(out_dir / "report.html", page)


def write_interpretation(run: LoadedRun, interp: CachedInterpretation, out_dir: Path, split: str, tta: bool,
                         notes: list[str], top_k: int = 16) -> dict:
    """All interpretation artefacts into `out_dir`; returns the tables for the terminal."""

    make_folder(out_dir)
    labels = class_labels(run.classes, run.chars)
    save_fig(plot_confusion(interp, labels), out_dir / "confusion.png")
    save_fig(plot_top_losses(interp, labels, top_k), out_dir / "top_losses.png")
    cm = interp.confusion_matrix()
    most = [{"actual": labels[i], "predicted": labels[j], "count": int(cm[i, j])}
            for i, j in sorted(zip(*np.nonzero(cm - np.diag(np.diag(cm)))), key=lambda ij: -cm[ij])]
    per_class = interp.per_class()
    for r in per_class:
        r["name"] = labels[r["class"]]
    write_csv(out_dir / "most_confused.csv", most, ["actual", "predicted", "count"])
    write_csv(out_dir / "per_class.csv", per_class)
    images = {"Confusion matrix": out_dir / "confusion.png", "Top losses": out_dir / "top_losses.png"}
    curves = run.path / "curves.png"
    if curves.is_file():  # a FIFO in its place would block the report forever
        images = {"Training curves": curves, **images}
    write_report(out_dir, run, interp, split, tta, notes, images, most, per_class)
    return {"most_confused": most, "per_class": per_class, "accuracy": interp.accuracy,
            "macro_f1": float(np.mean([r["f1"] for r in per_class]))}
