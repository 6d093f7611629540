"""The typed config: one declaration per option feeds the CLI, recipes, sweeps, validation and run.json."""
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from kmnist_fa.config.options import OPTIONS, RECIPE_KEYS, SWEEPABLE, TrainConfig, recipe_values
from kmnist_fa.core.errors import OptionError

ROOT = Path(__file__).resolve().parents[1]


def test_flat_names_nested_groups_round_trip():
    cfg = TrainConfig.build(arch="alexnet5", lr=1e-3, aug="heavy", n_folds=5, fold=2, from_run="p", freeze_epochs=2)
    assert (cfg.model.arch, cfg.optim.lr, cfg.reg.aug, cfg.split.fold, cfg.transfer.freeze_epochs) == \
           ("alexnet5", 1e-3, "heavy", 2, 2)
    assert cfg.total_epochs == 12 and cfg.get("lr") == 1e-3 and set(cfg.flat()) == set(OPTIONS)
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg
    assert cfg.replace(lr=3e-3).optim.lr == 3e-3 and cfg.optim.lr == 1e-3
    assert "lr" in RECIPE_KEYS and "data" not in RECIPE_KEYS and "arch" not in SWEEPABLE and "lr" in SWEEPABLE
    rv = recipe_values(cfg)
    assert rv["freeze_epochs"] == 2 and "fold" not in rv and "data" not in rv
    assert "freeze_epochs" not in recipe_values(cfg.replace(from_run=None))


@pytest.mark.parametrize("kw,msg", [
    (dict(lr=float("nan")), "--lr must be a finite number, got nan"),
    (dict(wd=float("inf")), "--wd must be a finite number, got inf"),
    (dict(wd=-1.0), "--wd must be non-negative"),
    (dict(mom=1.0), r"--mom must be in \[0, 1\)"),
    (dict(valid_pct=1.0), r"--valid-pct must be in \(0, 1\)"),
    (dict(epochs=True), "--epochs must be a whole number"),
    (dict(bs="64"), "--bs must be a whole number"),
    (dict(n_folds=1, fold=0), "--n-folds must be at least 2"),
    (dict(full=True, n_folds=5, fold=0), "cannot be combined"),
    (dict(learning_rate=1), "unknown option: learning_rate"),
    (dict(seed=-1), r"--seed must be in \[0, 4294967295\], got -1"),
    (dict(seed=2**64), r"--seed must be in \[0, 4294967295\], got 18446744073709551616"),
])
def test_checks(kw, msg):
    with pytest.raises(OptionError, match=msg):
        TrainConfig.build(**kw)


def test_bad_choices_fail_before_torch_loads():
    code = textwrap.dedent("""
        import sys
        from typer.testing import CliRunner
        from kmnist_fa.cli import app
        for args in (["--opt", "adamw"], ["--lr", "inf"], ["--aug", "extreme"], ["--n-folds", "5"]):
            r = CliRunner().invoke(app, ["train", "lenet5", *args])
            assert r.exit_code == 2 and r.output.startswith("error: --"), r.output
        for cmd in (["sweep", "lenet5", "--param", "bogus=1"], ["tune", "lenet5", "--param", "lr=x", "--n-folds", "3"]):
            r = CliRunner().invoke(app, cmd)
            assert r.exit_code == 2 and r.output.startswith("error: --param"), r.output
        assert "torch" not in sys.modules and "fastai" not in sys.modules
    """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr


@pytest.mark.slow
def test_an_option_added_in_one_place_reaches_cli_recipes_sweeps_and_run_json(tmp_path, synth):
    """Copy the package, add one `option(...)` line to config/options.py, and look for it everywhere."""
    pkg = tmp_path / "src" / "kmnist_fa"
    shutil.copytree(ROOT / "kmnist_fa", pkg, ignore=shutil.ignore_patterns("__pycache__", "reference"))  # no weights
    src = (pkg / "config" / "options.py").read_text()
    anchor = '    schedule: str = option("one-cycle"'
    assert src.count(anchor) == 1
    line = '    warmup_pct: float = option(0.3, "Dummy: warm-up fraction.", min=0, max=1, sweep=True)\n'
    (pkg / "config" / "options.py").write_text(src.replace(anchor, line + anchor))
    script = textwrap.dedent(f"""
        import json
        from pathlib import Path
        from typer.testing import CliRunner
        import kmnist_fa
        assert Path(kmnist_fa.__file__).parent == Path({str(pkg)!r})
        from kmnist_fa.cli import app
        from kmnist_fa.core.errors import OptionError
        from kmnist_fa.config.recipes import resolve_config
        from kmnist_fa.pipelines.sweep import parse_param
        run = CliRunner().invoke
        r = run(app, ["train", "--help"], terminal_width=200)
        text = " ".join(r.output.replace("│", " ").split())  # help wraps at its own width
        assert "--warmup-pct" in text and "Dummy: warm-up fraction." in text, r.output
        assert "--warmup-pct" in run(app, ["sweep", "--help"], terminal_width=200).output
        Path("r.toml").write_text('arch = "lenet5"\\nwarmup_pct = 0.5\\n')
        cfg, _ = resolve_config(None, "r.toml", {{}})
        assert cfg.optim.warmup_pct == 0.5
        assert parse_param("warmup-pct=0.1,0.2") == ("warmup_pct", [0.1, 0.2])
        r = run(app, ["train", "lenet5", "--warmup-pct", "2"])
        assert r.exit_code == 2 and "--warmup-pct must be in [0, 1], got 2.0" in r.output, r.output
        r = run(app, ["train", "lenet5", "--epochs", "1", "--lr", "3e-3", "--warmup-pct", "0.25", "--data",
                      {str(synth)!r}, "--models-dir", "m", "--name", "d", "-q"])
        assert r.exit_code == 0, r.output
        assert json.loads(Path("m/d/run.json").read_text())["config"]["optim"]["warmup_pct"] == 0.25
        print("ok")
    """)
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path,
                       env={**__import__("os").environ, "PYTHONPATH": str(pkg.parent)})
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr[-3000:]


def test_tta_settings_are_one_checked_type():
    """reference/default.json, export metadata and load_run share TtaSettings: every key read, bad ones refused."""
    from kmnist_fa.config.options import TtaSettings

    t = TtaSettings.from_json({"tta": True, "tta_n": 8, "tta_beta": 0.5, "tta_aug": "light", "method": "vote"}, "d.json")
    assert (t.on, t.n, t.beta, t.aug, t.method) == (True, 8, 0.5, "light", "vote")
    assert TtaSettings.from_json(t.to_json(), "again") == t and TtaSettings.from_json({}, "x") == TtaSettings()
    for bad, msg in (({"tta_n": 0}, "passes"), ({"tta_beta": 1.5}, "clean-pass weight"), ({"tta_aug": "wild"},
                     "augmentation"), ({"method": "median"}, "--method"), ([], "must be a table")):
        with pytest.raises(OptionError, match=msg) as e:
            TtaSettings.from_json(bad, "reference/default.json")
        assert str(e.value).startswith("reference/default.json: ")
