"""Quiet displays: help without value placeholders on flags, run displays without unset or unused options, an
unfinished run whose writer is gone shown as interrupted, an lr_find plot that agrees with its table."""
import json
import shutil
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from kmnist_fa.cli import app
from kmnist_fa.config.options import TrainConfig
from kmnist_fa.config.shown import shown_options

runner = CliRunner()
WIDE = {"COLUMNS": "200", "TERMINAL_WIDTH": "200"}


def _commands(group, path=()):
    """Every command path of the CLI, groups included (`()` is the top level)."""
    yield path
    for name, cmd in getattr(group, "commands", {}).items():
        yield from _commands(cmd, (*path, name))


def test_no_help_shows_a_value_placeholder_on_a_flag():
    paths = list(_commands(typer.main.get_command(app)))
    assert ("models", "show") in paths and ("data", "info") in paths and ("train",) in paths
    for path in paths:
        r = runner.invoke(app, [*path, "--help"], env=WIDE)
        assert r.exit_code == 0, (path, r.output)
        assert "<bool>" not in r.output, path
    r = runner.invoke(app, ["train", "--help"], env=WIDE)
    assert "<int>" in r.output and "--mixup" in r.output  # options taking a value keep their type


def test_recipes_help_names_every_recipe_family():
    from kmnist_fa.config.recipes import list_recipes

    families = {n.split("-")[0] for n in list_recipes()}
    assert {"report", "default", "fast"} <= families
    r = runner.invoke(app, ["--help"], env=WIDE)
    line = " ".join(r.output.split("recipes ")[1].split("lr-find")[0].split())
    for family in families:
        assert family in line, (family, line)


# ---------------------------------------------------------------- which options a display lists

def test_shown_options_leave_out_unset_and_unused():
    shown = shown_options(TrainConfig.build(arch="lenet5"))
    assert shown["epochs"] == 10 and shown["valid_pct"] == 0.1 and shown["seed"] == 42
    assert not {"bn", "dropout", "lr", "mom", "wd", "mixup", "label_smoothing", "ema", "pseudo_threshold",
                "distill_weight", "distill_temp", "freeze_epochs", "lr_mult", "partial", "cpu", "full"} & set(shown)


def test_shown_options_keep_what_the_run_set_or_used():
    shown = shown_options(TrainConfig.build(arch="lenet5", teacher="t", pseudo="p", from_run="r", dropout=0.0,
                                            bn=False, n_folds=5, fold=1, mixup=True, ema=0.99))
    assert {"teacher": "t", "distill_weight": 0.5, "distill_temp": 2.0, "pseudo": "p", "pseudo_threshold": 0.95,
            "from_run": "r", "freeze_epochs": 1, "lr_mult": 100.0, "dropout": 0.0, "bn": False, "n_folds": 5,
            "fold": 1, "mixup": True, "ema": 0.99}.items() <= shown.items()
    assert "valid_pct" not in shown  # k-fold: the holdout fraction played no part


def test_models_show_and_model_card_are_quiet(lenet_run):
    from kmnist_fa.infer.export import model_card
    from kmnist_fa.infer.predict import load_run

    r = runner.invoke(app, ["models", "--models-dir", str(lenet_run.path.parent), "show", lenet_run.path.name],
                      env=WIDE)
    assert r.exit_code == 0, r.output
    shown = {line.split()[2] for line in r.output.splitlines() if line.startswith("│ option ")}
    assert {"epochs", "bs", "valid_pct", "seed"} <= shown
    assert not {"bn", "dropout", "mom", "wd", "distill_weight", "pseudo_threshold", "freeze_epochs"} & shown
    assert "None" not in r.output
    card = model_card(load_run(lenet_run.path))
    table = {line.split("`")[1] for line in card.splitlines() if line.startswith("| `")}
    assert table == set(shown_options(lenet_run.record.config))
    assert "distill_weight" not in card and "pseudo_threshold" not in card and "None" not in card


# ---------------------------------------------------------------- interrupted runs

@pytest.fixture
def unfinished(lenet_run, tmp_path) -> Path:
    """A copy of the fixture run whose record says `running`, 8 of 40 epochs, as a killed trainer leaves it."""
    from kmnist_fa.runs.record import RunRecord

    run = tmp_path / "killed"
    shutil.copytree(lenet_run.path, run)
    rec = RunRecord.read(run)
    rec.status, rec.total_epochs = "running", 40
    rec.write(run)
    return run


def _states(run: Path) -> tuple[str, dict, str, dict]:
    root = str(run.parent)
    listing = runner.invoke(app, ["models", "--models-dir", root], env=WIDE).output
    rows = json.loads(runner.invoke(app, ["models", "--models-dir", root, "--json"]).output)
    shown = runner.invoke(app, ["models", "--models-dir", root, "show", run.name], env=WIDE).output
    record = json.loads(runner.invoke(app, ["models", "--models-dir", root, "show", run.name, "--json"]).output)
    return listing, next(r for r in rows if r["name"] == run.name), shown, record


def test_unfinished_run_with_no_writer_is_interrupted(unfinished):
    from kmnist_fa.runs.store import writer_alive

    assert writer_alive(unfinished) is False
    resume = f"kmnist-fa train --resume killed --models-dir {unfinished.parent}"
    listing, row, shown, record = _states(unfinished)
    assert "interrupted" in listing and "running" not in listing and f"`{resume}`" in listing
    assert row["status"] == "interrupted" and row["resume"] == resume
    assert "interrupted, 8/40 epochs" in shown and resume in shown
    assert record["status"] == "interrupted" and record["resume"] == resume


def test_unfinished_run_whose_writer_holds_the_lock_is_running(unfinished):
    from kmnist_fa.runs.store import run_lock, writer_alive

    with run_lock(unfinished):  # as the training process holds it for the whole fit
        assert writer_alive(unfinished) is True
        listing, row, shown, record = _states(unfinished)
    assert "interrupted" not in listing and "running" in listing and "--resume" not in listing
    assert row["status"] == "running" and "resume" not in row
    assert "running, 8/40 epochs" in shown and "--resume" not in shown
    assert record["status"] == "running" and "resume" not in record


def test_complete_runs_are_never_probed(lenet_run, monkeypatch):
    import kmnist_fa.runs.store as store

    monkeypatch.setattr(store, "writer_alive", lambda path: pytest.fail("probed a complete run"))
    rows = json.loads(runner.invoke(app, ["models", "--models-dir", str(lenet_run.path.parent), "--json"]).output)
    assert {r["status"] for r in rows} == {"complete"}


# ---------------------------------------------------------------- lr_find plot

def test_lr_find_plot_labels_suggestions_as_the_table_does():
    import numpy as np

    from kmnist_fa.core.plots import plot_lr_find, plt

    lrs = np.logspace(-7, 1, 100)
    losses = 2.3 - np.exp(-((np.log10(lrs) + 1.5) ** 2))  # lowest loss at lr 10^-1.5
    lowest = float(lrs[losses.argmin()])
    sugg = {"valley": 1.7e-3, "slide": 2.1e-1, "minimum": lowest / 10, "steep": 4.4e-3}
    fig = plot_lr_find(lrs, losses, sugg, lowest=lowest)
    ax = fig.axes[0]
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels[:4] == [f"{k} {v:.2e}" for k, v in sugg.items()]  # the CLI table prints f"{v:.2e}"
    assert labels[4] == f"lowest loss at {lowest:.2e}"
    assert "minimum = lr at lowest loss / 10" in ax.get_title()
    marks = {line.get_label(): line.get_xdata()[0] for line in ax.get_lines()[1:]}
    assert marks[f"minimum {sugg['minimum']:.2e}"] == pytest.approx(lowest / 10)  # at the value, not the lowest loss
    plt.close(fig)
