"""A self-training pipeline as a table: what `train --recipe default` ends with and `models show NAME` shows.

Reads only the pipeline record and run.json files (never torch), so `models show` stays instant.
"""
from __future__ import annotations

from pathlib import Path

from rich.table import Table

from ..runs.pipeline import PipelineRecord
from ..runs.store import run_status


def _pct(v) -> str:
    return "-" if not isinstance(v, (int, float)) else f"{100 * v:.2f}%"


def _spread(row: dict, key: str) -> str:
    m, s = row.get(f"{key}_mean"), row.get(f"{key}_sd")
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
        r = rec.results.get(s.run, {}) if isinstance(rec.results.get(s.run), dict) else {}
        mins = r.get("wall_time_s")
        t.add_row(s.run, s.generation.name, ", ".join(s.generation.pseudo + s.generation.teacher) or "-",
                  run_status(s.run, root), str(r.get("epochs", "-")), "-" if r.get("pseudo_images") is None else str(r["pseudo_images"]),
                  _pct(r.get("valid_acc")), _pct(r.get("valid_acc_tta")),
                  "-" if not isinstance(mins, (int, float)) else f"{mins / 60:.1f}")
    if kfold and isinstance(rec.cv, dict):
        for g in rec.generations:
            row = rec.cv.get(g.name)
            if isinstance(row, dict):
                t.add_row(f"{g.name}: mean ± sd", g.name, "", "", "", "", _spread(row, "valid_acc"),
                          _spread(row, "valid_acc_tta"), str(row.get("minutes", "-")), style="bold")
    return t


def cv_line(rec: PipelineRecord) -> str | None:
    """The pipeline's cross-validated score in one sentence, or None without one."""
    s = (rec.cv or {}).get("score")
    if not isinstance(s, dict) or not isinstance(s.get("mean"), (int, float)):
        return None
    g = rec.last.options
    how = f"with TTA n={g.get('tta_n', 4)}, clean weight {g.get('tta_beta', 0.25)}" if s.get("with") == "tta" \
        else "without TTA"
    return (f"pipeline {rec.name}: {s['folds']}-fold CV {100 * s['mean']:.2f} ± {100 * (s.get('sd') or 0):.2f}% "
            f"(generation {s.get('generation')}, last epoch, {how})")
