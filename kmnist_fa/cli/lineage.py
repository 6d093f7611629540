"""A self-training pipeline as a table: what `train --recipe default` ends with and `models show NAME` shows.

Reads only the pipeline record and run.json files (never torch), so `models show` stays instant.
"""
from __future__ import annotations

import math
from pathlib import Path

from rich.table import Table

from ..runs.pipeline import PipelineRecord
from ..runs.store import run_status


def _num(v) -> float | None:
    """A record's number as a float for display, or None: the record is untrusted, and a string, a bool or a
    400-digit integer where a score belongs must print as missing, not raise."""
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    try:
        f = float(v)
    except OverflowError:
        return None
    return f if math.isfinite(f) and abs(f) < 1e9 else None


def _pct(v) -> str:
    v = _num(v)
    return "-" if v is None else f"{100 * v:.2f}%"


def _spread(row: dict, key: str) -> str:
    m, s = _num(row.get(f"{key}_mean")), _num(row.get(f"{key}_sd"))
    return "-" if m is None else f"{100 * m:.2f} ± {100 * (s or 0):.2f}%"


def pipeline_table(rec: PipelineRecord, root: str | Path | None = None) -> Table:
    """One row per run (generation, fold): status, epochs, pseudo-labelled images, accuracy, minutes; with
    k folds, one summary row per generation after them."""
    kfold = rec.n_folds is not None
    t = Table(title=f"pipeline {rec.name} (recipe {rec.recipe}"
                    + (f", {len(rec.folds)} of {rec.n_folds} folds)" if kfold else ")"))
    for c in ("run", "generation", "teachers", "status", "epochs", "pseudo-labelled", "valid acc", "with TTA", "min"):
        t.add_column(c, justify="right" if c in ("epochs", "pseudo-labelled", "valid acc", "with TTA", "min")
                     else "left")
    for s in rec.stages():
        r = rec.results.get(s.run, {})
        mins, epochs, pseudo = _num(r.get("wall_time_s")), _num(r.get("epochs")), _num(r.get("pseudo_images"))
        t.add_row(s.run, s.generation.name, ", ".join(s.generation.pseudo + s.generation.teacher) or "-",
                  run_status(s.run, root), "-" if epochs is None else f"{epochs:.0f}",
                  "-" if pseudo is None else f"{pseudo:.0f}", _pct(r.get("valid_acc")), _pct(r.get("valid_acc_tta")),
                  "-" if mins is None else f"{mins / 60:.1f}")
    if kfold and isinstance(rec.cv, dict):
        for g in rec.generations:
            row = rec.cv.get(g.name)
            if isinstance(row, dict):
                mins = _num(row.get("minutes"))
                t.add_row(f"{g.name}: mean ± sd", g.name, "", "", "", "", _spread(row, "valid_acc"),
                          _spread(row, "valid_acc_tta"), "-" if mins is None else f"{mins:.1f}", style="bold")
    return t


def cv_line(rec: PipelineRecord) -> str | None:
    """The pipeline's cross-validated score in one sentence (or one fold's score), or None without one; it says
    which epoch was scored, since only the last one is honest."""
    s = (rec.cv or {}).get("score")
    mean, sd = _num(s.get("mean")) if isinstance(s, dict) else None, _num(s.get("sd")) if isinstance(s, dict) else 0
    if mean is None:
        return None
    cfg = rec.stages()[-1].config
    how = f"with TTA n={cfg.predict.tta_n}, clean weight {cfg.predict.tta_beta}" if s.get("with") == "tta" \
        else "without TTA"
    epoch = "last epoch" if cfg.keep == "last" else "best epoch, picked on the validation fold: optimistic"
    if len(rec.folds) == 1:
        score = f"fold {rec.folds[0]} of {rec.n_folds}: {100 * mean:.2f}%"
    else:
        score = f"{len(rec.folds)}-fold CV {100 * mean:.2f} ± {100 * (sd or 0):.2f}%"
    return f"pipeline {rec.name}: {score} (generation {rec.last.name}, {epoch}, {how})"
