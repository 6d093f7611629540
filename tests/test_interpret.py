import json
import re

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from kmnist_fa.cli import app
from kmnist_fa.core.errors import DataError, OptionError
from kmnist_fa.infer.interpret import evaluate, interpret, labelled_split, write_interpretation
from kmnist_fa.infer.predict import load_run, run_data

runner = CliRunner()


@pytest.fixture(scope="module")
def interp_out(lenet_run, tmp_path_factory):
    run = load_run(lenet_run.path)
    interp, notes = interpret(run, run_data(run), "valid")
    out = tmp_path_factory.mktemp("interp")
    res = write_interpretation(run, interp, out, "valid", False, notes, top_k=12)
    return run, interp, res, out


def test_confusion_matrix_consistent(interp_out, lenet_run):
    _, interp, res, _ = interp_out
    cm = interp.confusion_matrix()
    assert cm.sum() == 120 == lenet_run.record.split.n_valid
    assert np.trace(cm) / cm.sum() == pytest.approx(res["accuracy"])
    assert res["accuracy"] == pytest.approx(lenet_run.record.best.accuracy, abs=1e-6)
    for r in res["per_class"]:
        i = r["class"]
        assert r["support"] == cm[i].sum()
        assert r["recall"] == pytest.approx(cm[i, i] / cm[i].sum())
        assert r["precision"] == pytest.approx(cm[i, i] / cm[:, i].sum())


def test_most_confused_agrees_with_matrix(interp_out):
    run, interp, res, out = interp_out
    cm = interp.confusion_matrix()
    labels = [f"{c} {n}" for c, n in zip(run.chars, run.classes)]
    counts = [r["count"] for r in res["most_confused"]]
    assert counts == sorted(counts, reverse=True)
    assert sum(counts) == cm.sum() - np.trace(cm)
    for r in res["most_confused"]:
        assert cm[labels.index(r["actual"]), labels.index(r["predicted"])] == r["count"]
    lines = (out / "most_confused.csv").read_text(encoding="utf-8").splitlines()
    assert lines[0] == "actual,predicted,count" and len(lines) == len(res["most_confused"]) + 1
    # fastai's own most_confused, over the same cached predictions, gives the same pairs
    fa = {(a, p): c for a, p, c in interp.most_confused()}
    assert {(run.classes[labels.index(r["actual"])], run.classes[labels.index(r["predicted"])]): r["count"]
            for r in res["most_confused"]} == fa


def test_pngs_and_csvs(interp_out):
    *_, out = interp_out
    for name, min_w in (("confusion.png", 600), ("top_losses.png", 500)):
        w, h = Image.open(out / name).size
        assert w >= min_w and 150 <= h <= 3000
    assert (out / "per_class.csv").read_text().splitlines()[0] == "class,name,precision,recall,f1,support"


def test_html_report_is_self_contained(interp_out):
    *_, out = interp_out
    page = (out / "report.html").read_text(encoding="utf-8")
    srcs = re.findall(r"src='([^']*)'", page)
    assert len(srcs) == 3 and all(s.startswith("data:image/png;base64,") for s in srcs)
    assert "http://" not in page and "https://" not in page
    assert "Most confused" in page and "お o" in page


def test_html_report_lists_only_the_options_that_shaped_the_run(interp_out):
    run, *_, out = interp_out
    page = (out / "report.html").read_text(encoding="utf-8")
    options = page.split("<h2>Options</h2>")[1].split("<h2>")[0]
    rows = dict(re.findall(r"<tr><td>([^<]*)</td><td>([^<]*)</td></tr>", options))
    assert rows["epochs"] == "8" and rows["lr"] == "0.0100" and rows["valid_pct"] == "0.1000"
    assert "None" not in rows.values()  # unset: bn, dropout, mom, wd ...
    assert not {"bn", "dropout", "mom", "wd", "mixup", "distill_weight", "pseudo_threshold", "freeze_epochs"} & set(rows)
    assert f"learning rate {run.record.lr:.3g} ({run.record.lr_source})" in " ".join(page.split())


def test_hiragana_render_not_tofu():
    from kmnist_fa.core.plots import font_has, japanese_font, render_text

    assert japanese_font()
    assert font_has("お") and not font_has("\U0010fffd")
    tofu_a, tofu_b = render_text("\U0010fffd"), render_text("\U0010fffc")
    assert np.array_equal(tofu_a, tofu_b)  # missing glyphs all draw the same box...
    for ch in "おきすつなはまやれを":
        assert not np.array_equal(render_text(ch), tofu_a), ch  # ...and the kana are not that box


def test_test_split_needs_labels(lenet_run):
    run = load_run(lenet_run.path)
    with pytest.raises(DataError, match="has no labels"):
        labelled_split(run, run_data(run), "test")
    with pytest.raises(OptionError, match="--split must be one of"):
        labelled_split(run, run_data(run), "train")
    r = runner.invoke(app, ["interpret", str(lenet_run.path), "--split", "test"])
    assert r.exit_code == 2 and "has no labels" in r.output


def test_evaluate_flags_runs_on_other_data(lenet_run, tmp_path):
    from tests.conftest import write_synthetic

    run = load_run(lenet_run.path)
    ev = evaluate(run, run_data(run), "valid")
    assert ev.n == 120 and ev.flags == [] and ev.accuracy == pytest.approx(lenet_run.record.best.accuracy, abs=1e-6)
    assert ev.errors == round((1 - ev.accuracy) * 120)
    from kmnist_fa.data.datasets import load_dataset

    other = load_dataset(data=write_synthetic(tmp_path / "toy", n_train=200))
    ev2 = evaluate(run, other, "test")
    assert any("not toy" in f for f in ev2.flags)


def test_evaluate_and_interpret_cli(lenet_run, tmp_path):
    r = runner.invoke(app, ["evaluate", str(lenet_run.path), "--json"])
    assert r.exit_code == 0, r.output
    (row,) = json.loads(r.output)
    assert row["n"] == 120 and row["errors"] + round(row["accuracy"] * 120) == 120
    r = runner.invoke(app, ["interpret", str(lenet_run.path), "--out", str(tmp_path / "i"), "--top-k", "8"])
    assert r.exit_code == 0, r.output
    assert {p.name for p in (tmp_path / "i").iterdir()} == {"confusion.png", "top_losses.png", "most_confused.csv",
                                                            "per_class.csv", "report.html"}


@pytest.mark.parametrize("k", [16, 24])
def test_top_losses_titles_never_cover_images(interp_out, k):
    """Two-line titles ("お o / き ki" and "loss / prob") stay clear of the row of images above them."""
    from kmnist_fa.core.plots import plt
    from kmnist_fa.infer.interpret import plot_top_losses

    run, interp, _, _ = interp_out
    fig = plot_top_losses(interp, [run.record.label(i) for i in range(10)], k)
    fig.canvas.draw()
    r = fig.canvas.get_renderer()
    axes = [a for a in fig.axes if a.images]
    boxes = [a.images[0].get_window_extent(r) for a in axes] + [a.title.get_window_extent(r) for a in axes]
    boxes.append(fig._suptitle.get_window_extent(r))
    clash = [(i, j) for i, a in enumerate(boxes) for j, b in enumerate(boxes[i + 1:], i + 1)
             if a.x0 < b.x1 and b.x0 < a.x1 and a.y0 < b.y1 and b.y0 < a.y1]
    plt.close(fig)
    assert len(axes) == k and not clash, clash


def test_curves_of_a_full_run_say_there_is_no_validation(tmp_path, monkeypatch):
    from kmnist_fa.core.plots import plt
    from kmnist_fa.train.checkpoint import plot_curves

    hist = [{"epoch": i, "train_loss": 1.0 / (i + 1), "valid_loss": None, "accuracy": None} for i in range(3)]
    saved, texts = plt.Figure.savefig, []

    def spy(fig, *a, **kw):
        texts.extend(t.get_text() for ax in fig.axes for t in ax.texts)
        return saved(fig, *a, **kw)

    monkeypatch.setattr(plt.Figure, "savefig", spy)
    assert plot_curves(tmp_path, hist).exists()
    assert any("no validation split" in t for t in texts)
