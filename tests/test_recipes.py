import pytest
from typer.testing import CliRunner

from kmnist_fa.cli import app
from kmnist_fa.config.options import TrainConfig
from kmnist_fa.config.recipes import list_recipes, load_recipe, lr_source, resolve_config, resolve_pipeline
from kmnist_fa.core.errors import OptionError


def test_report_rows_are_recipes():
    names = set(list_recipes())
    for row in ("report-lenet5", "report-lenet5-aug", "report-alexnet5-aug", "report-alexnet5-bn",
                "report-alexnet7-adam", "report-alexnet7-sgd"):
        assert row in names
    sgd = load_recipe("report-alexnet7-sgd")
    assert (sgd["opt"], sgd["lr"], sgd["mom"], sgd["wd"]) == ("sgd", 5e-3, 0.8, 1e-4)


def test_every_recipe_builds_a_config():
    for name, r in list_recipes().items():
        if "generations" in r:  # a pipeline: each generation builds one (tests/test_selftrain.py)
            assert all(TrainConfig.build(**g.options).arch == r["arch"] for g in resolve_pipeline(name, {}))
            continue
        cfg, used = resolve_config(None, name, {})
        assert used == name and cfg.arch == r["arch"] and cfg.extra["recipe"] == name


def test_command_line_overrides_recipe():
    cfg, _ = resolve_config(None, "report-alexnet5-bn", {"epochs": 3, "lr": None, "aug": "heavy"})
    assert (cfg.optim.epochs, cfg.optim.lr, cfg.reg.aug, cfg.model.bn) == (3, 1e-4, "heavy", True)
    assert lr_source(cfg) == "recipe report-alexnet5-bn"  # what run.json and model cards show
    assert lr_source(resolve_config(None, "report-alexnet5-bn", {"lr": 2e-3})[0]) == "--lr"
    assert lr_source(resolve_config("lenet5", None, {})[0]) == "recipe default-lenet5"
    assert lr_source(resolve_config("lenet5", None, {})[0].replace(lr=0.5)) == "--lr"  # a sweep's or tune's value


def test_recipe_arch_mismatch_and_unknown(tmp_path):
    with pytest.raises(OptionError, match="is for alexnet5, not lenet5"):
        resolve_config("lenet5", "report-alexnet5-bn", {})
    with pytest.raises(OptionError, match="unknown recipe 'nope'"):
        load_recipe("nope")
    bad = tmp_path / "bad.toml"
    bad.write_text('arch = "lenet5"\nlearning_rate = 3\n')
    with pytest.raises(OptionError, match="unknown keys: learning_rate"):
        load_recipe(bad)
    bad.write_text("arch = ")
    with pytest.raises(OptionError, match="not valid TOML"):
        load_recipe(bad)


def test_user_recipe_file(tmp_path):
    f = tmp_path / "mine.toml"
    f.write_text('description = "mine"\narch = "lenet5"\nepochs = 2\nlr = 0.003\n')
    cfg, used = resolve_config(None, str(f), {})
    assert cfg.optim.epochs == 2 and used == str(f)
    f.write_text('arch = "lenet5"\nlr = "fast"\n')
    with pytest.raises(OptionError, match="--recipe mine.toml: lr must be a number, got 'fast'"):
        resolve_config(None, str(f), {})
    f.write_text('arch = "lenet5"\nlr = inf\n')
    with pytest.raises(OptionError, match="lr must be a finite number"):
        resolve_config(None, str(f), {})


def test_recipes_cli():
    r = CliRunner().invoke(app, ["recipes"])
    assert r.exit_code == 0 and "report-alexnet7-sgd" in r.output
