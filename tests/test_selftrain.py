"""Self-training pipelines (`train --recipe default`): generations in order, one record, resume, honest k-fold CV."""
import json
import statistics

import numpy as np
import pytest
import torch
from fastai.torch_core import set_seed
from PIL import Image
from typer.testing import CliRunner

from kmnist_fa.cli import app
from kmnist_fa.config.recipes import load_recipe, resolve_config, resolve_pipeline
from kmnist_fa.core.errors import OptionError, RunError
from kmnist_fa.data.splits import split_indices
from kmnist_fa.infer.ensemble import accuracy
from kmnist_fa.infer.predict import load_run, predict_probs, validation_set
from kmnist_fa.pipelines.selftrain import plan, resume_pipeline, run_pipeline
from kmnist_fa.pipelines.teachers import load_teachers
from kmnist_fa.pipelines.training import find_lr, prepare, train
from kmnist_fa.runs.pipeline import PipelineRecord
from kmnist_fa.runs.record import RunRecord
from kmnist_fa.train.learner import build_learner

from .conftest import Interrupt, lenet_cfg

RECIPE = """
description = "two generations of LeNet5"
arch = "lenet5"
epochs = 2
bs = 32
lr = 1e-2
aug = "none"
keep = "last"
tta = true
tta_n = 2
tta_beta = 0.5

[[generations]]
name = "t"

[[generations]]
name = "s"
pseudo = ["t"]
pseudo_threshold = 0.5
"""


@pytest.fixture
def recipe(tmp_path):
    f = tmp_path / "two.toml"
    f.write_text(RECIPE)
    return str(f)


class InterruptIn(Interrupt):
    """Ctrl-C after `after_epoch` of one named run only."""

    def __init__(self, run: str, after_epoch: int):
        super().__init__(after_epoch)
        self.target = run

    def after_epoch(self):
        if self.learn.path.name == self.target:
            super().after_epoch()


def test_kfold_pipeline_is_honest_and_scores_its_last_generation(recipe, kmnist, tmp_path):
    root = tmp_path / "m"
    res = run_pipeline(plan(recipe, {"data": str(kmnist.root), "n_folds": 2}, "cv", root), root, quiet=True,
                       data=kmnist)
    assert [s.run for s in res.record.stages()] == ["cv.f0.t", "cv.f0", "cv.f1.t", "cv.f1"]
    expected = []
    for k in (0, 1):
        student, teacher = RunRecord.read(root / f"cv.f{k}"), RunRecord.read(root / f"cv.f{k}.t")
        p = student.extra["pseudo"]
        assert p["teachers"] == [f"cv.f{k}.t"] and p["of"] == 300  # the unlabelled test images, never the fold's
        assert student.config.split == teacher.config.split and student.config.split.fold == k
        seen, _ = split_indices(kmnist.train_y, teacher.config.split)
        _, validated = split_indices(kmnist.train_y, student.config.split)
        assert len(validated) == 600 and not set(seen) & set(validated)  # the teacher never saw the fold
        assert student.best.epoch == 2 and student.best.accuracy == student.history[-1]["accuracy"]  # last epoch
        run = load_run(root / f"cv.f{k}")
        assert (run.tta.on, run.tta.n, run.tta.beta) == (True, 2, 0.5)  # the recipe's own TTA settings
        x, y, _ = validation_set(run, kmnist)
        expected.append(accuracy(predict_probs(run, x, tta=True, n=2), y))
    score = res.record.cv["score"]
    assert (score["generation"], score["with"], score["folds"]) == ("s", "tta", 2)
    assert score["mean"] == pytest.approx(statistics.mean(expected)) and score["sd"] > 0
    assert res.record.cv["t"]["valid_acc"] == [RunRecord.read(root / f"cv.f{k}.t").best.accuracy for k in (0, 1)]
    shown = CliRunner().invoke(app, ["models", "--models-dir", str(root), "show", "cv"])
    assert shown.exit_code == 0 and f"2-fold CV {100 * score['mean']:.2f}" in shown.output
    assert PipelineRecord.read("cv", root).status == "complete"


def test_a_pipeline_resumes_wherever_it_stopped_and_predicts_with_its_tta(recipe, kmnist, tmp_path):
    root = tmp_path / "m"
    rec = plan(recipe, {"data": str(kmnist.root)}, "r", root)
    rec.write(root)  # killed before its first run saved anything: the record alone says what to do
    with pytest.raises(KeyboardInterrupt):
        resume_pipeline("r", root, quiet=True, data=kmnist, cbs=[InterruptIn("r", 0)])
    teacher = (root / "r.t" / "model.pth").read_bytes()
    assert RunRecord.read(root / "r.t").complete and RunRecord.read(root / "r").epochs_done == 1
    assert PipelineRecord.read("r", root).status == "running"
    listed = CliRunner().invoke(app, ["models", "--models-dir", str(root)]).output
    assert f"r: interrupted; continue with `kmnist-fa train --resume r --models-dir {root}`" in listed
    assert "pipeline r: unfinished" in listed
    res = resume_pipeline("r", root, quiet=True, data=kmnist)
    assert res.runs["r"].complete and res.runs["r"].epochs_done == 2
    assert (root / "r.t" / "model.pth").read_bytes() == teacher  # a finished generation is kept, not retrained
    assert res.runs["r"].config.extra["pipeline"]["generation"] == "s"
    runner = CliRunner()
    got = runner.invoke(app, ["predict", str(kmnist.root), "--model", "r", "--models-dir", str(root), "--json"])
    used = json.loads(got.stdout)["used"]
    assert (used["tta"], used["tta_n"], used["tta_beta"]) == (True, 2, 0.5)
    got = runner.invoke(app, ["predict", str(kmnist.root), "--model", "r", "--models-dir", str(root), "--json",
                              "--no-tta"])
    assert json.loads(got.stdout)["used"]["tta"] is False
    again = runner.invoke(app, ["train", "--recipe", recipe, "--data", str(kmnist.root), "--name", "r",
                                "--models-dir", str(root)])
    assert again.exit_code == 2 and "pipeline r already exists" in again.output and "--resume r" in again.output
    shown = runner.invoke(app, ["models", "--models-dir", str(root), "show", "r"])
    assert "generation s (2 of 2) of pipeline r" in shown.output and "r.t" in shown.output


def test_unlabelled_images_from_a_folder(teacher, kmnist, tmp_path):
    folder = tmp_path / "unlabelled"
    folder.mkdir()
    for i in range(5):
        Image.fromarray(kmnist.test_x[i]).save(folder / f"{i}.png")
    cfg = lenet_cfg(kmnist, pseudo="teacher", pseudo_threshold=0.0, unlabelled=str(folder), epochs=1)
    p = train(cfg, name="own", root=teacher, quiet=True, data=kmnist).record.extra["pseudo"]
    assert (p["of"], p["images"], p["unlabelled"]) == (5, 5, str(folder)) and len(p["unlabelled_md5"]) == 32
    with pytest.raises(Exception, match="--unlabelled"):
        train(cfg.replace(unlabelled=str(tmp_path / "none")), name="none", root=teacher, quiet=True, data=kmnist)
    with pytest.raises(OptionError, match="--unlabelled names images for self-training to label: it needs --pseudo"):
        lenet_cfg(kmnist, unlabelled=str(folder))
    # the labelled file itself: its validation images would be pseudo-labelled and trained on
    leak = cfg.replace(unlabelled=str(kmnist.root / "train-images-idx3-ubyte.gz"))
    with pytest.raises(Exception, match=r"120 of its images are this run's validation images"):
        train(leak, name="leak", root=teacher, quiet=True, data=kmnist)


def test_lr_find_trains_on_the_distillation_loss(teacher, kmnist):
    cfg = lenet_cfg(kmnist, teacher="teacher", distill_weight=1.0)
    losses = []
    for with_teacher in (False, True):
        set_seed(0, reproducible=True)
        data, dls = prepare(cfg, data=kmnist)
        learn = build_learner(dls, cfg, quiet=True)
        find_lr(learn, cfg, load_teachers(cfg, data, teacher, dls.device) if with_teacher else [])
        losses.append(torch.stack([torch.as_tensor(v) for v in learn.recorder.losses[:20]]))
        assert not any(type(c).__name__ == "Distill" for c in learn.cbs)  # only for the search
    assert not torch.allclose(*losses)


def test_recipes_and_records_are_checked(recipe, kmnist, tmp_path):
    gens = resolve_pipeline("default", {"epochs": 1, "seed": 3, "lr": None})
    assert [g.name for g in gens] == ["g1", "g2"] and gens[1].pseudo == ("g1",)
    assert all(g.options["epochs"] == 1 and g.options["seed"] == 3 and g.options["keep"] == "last" for g in gens)
    assert load_recipe("default")["tta"] is True
    with pytest.raises(OptionError, match="is a self-training pipeline"):
        resolve_config(None, "default", {})
    with pytest.raises(OptionError, match="name their own teachers"):
        resolve_pipeline("default", {"pseudo": "x"})
    bad = tmp_path / "bad.toml"
    for body, msg in (('[[generations]]\nname = "a"\npseudo = ["b"]\n', "'b', which is not an earlier generation"),
                      ('[[generations]]\nname = "a"\n[[generations]]\nname = "a"\n', "'a' is used twice"),
                      ('[[generations]]\nlearning_rate = 1\n', "generation g1 has unknown keys: learning_rate"),
                      ('[[generations]]\nname = "../x"\n', "name must be 1-40 letters"),
                      ('generations = 3\n', "generations must be a list")):
        bad.write_text('arch = "lenet5"\n' + body)
        with pytest.raises(OptionError, match=msg):
            load_recipe(bad)
    with pytest.raises(OptionError, match="--fold must be in 0..1"):
        plan(recipe, {"n_folds": 2, "fold": 2}, "x", tmp_path)
    with pytest.raises(OptionError, match="cannot be combined with --n-folds"):
        plan(recipe, {"n_folds": 2, "full": True}, "x", tmp_path)
    bad.write_text('arch = "lenet5"\n[[generations]]\nfold = 1\n')
    with pytest.raises(OptionError, match="generation g1 sets fold; a pipeline's folds come from the command line"):
        load_recipe(bad)
    bad.write_text('arch = "lenet5"\n[[generations]]\n[[generations]]\nseed = 7\n')
    with pytest.raises(OptionError, match="generations set different splits"):
        resolve_pipeline(str(bad), {})
    root = tmp_path / "m"
    rec = plan(recipe, {"data": str(kmnist.root)}, "p", root)
    rec.write(root)
    (root / "p.pipeline.json").rename(root / "q.pipeline.json")  # a copied record must not train p's runs
    with pytest.raises(RunError, match="records pipeline 'p', not 'q'"):
        resume_pipeline("q", root)
    (root / "q.pipeline.json").rename(root / "p.pipeline.json")
    with pytest.raises(OptionError, match="p is a self-training pipeline"):  # one name, one meaning
        train(lenet_cfg(kmnist), name="p", root=root, quiet=True, data=kmnist)
    runner = CliRunner()
    got = runner.invoke(app, ["train", "--recipe", recipe, "--data", str(tmp_path / "nope"), "--name", "nodata",
                              "--models-dir", str(root)])
    assert got.exit_code == 2 and not (root / "nodata.pipeline.json").exists()  # no record promises a resume
    for text in ("{", '{"format_version": 1, "name": "p", "recipe": "x", "created": "", "status": "running", '
                      '"results": {}, "folds": [null], "generations": [{"name": "g1", "lr": -1}]}', "x" * (2 << 20)):
        (tmp_path / "p.pipeline.json").write_text(text)
        got = runner.invoke(app, ["train", "--resume", "p", "--models-dir", str(tmp_path)])
        assert got.exit_code == 2 and len(got.output.strip().splitlines()) == 1 and "p.pipeline.json" in got.output
    assert not np.any([p.is_dir() for p in tmp_path.iterdir() if p.name.startswith("p")])
