import json
import shutil

import pytest
from PIL import Image
from typer.testing import CliRunner

from kmnist_fa.cli import app
from kmnist_fa.config.options import TrainConfig
from kmnist_fa.core.errors import OptionError
from kmnist_fa.pipelines import sweep as sw


def _base(kmnist, **kw):
    return TrainConfig.build(**{**dict(arch="lenet5", epochs=1, lr=3e-3, data=str(kmnist.root)), **kw})


def test_line_and_grid_counts(kmnist):
    base = _base(kmnist)
    params = [sw.parse_param("lr=1e-3,3e-3,1e-2"), sw.parse_param("wd=0,1e-4,1e-2")]
    line = sw.expand(base, params, "line")
    assert len(line) == 6  # lr=3e-3 is the base: counted once
    assert {"lr": 3e-3, "wd": None} in line
    assert len(sw.expand(base, params, "grid")) == 9
    assert sw.parse_param("bn=true,false") == ("bn", [True, False])
    assert sw.parse_param("label-smoothing=0,0.1") == ("label_smoothing", [0.0, 0.1])
    with pytest.raises(OptionError, match="not sweepable"):
        sw.parse_param("arch=lenet5")
    with pytest.raises(OptionError, match="'abc' is not a valid value"):
        sw.parse_param("lr=abc")
    with pytest.raises(OptionError, match="--param opt must be one of"):  # checked as it is parsed
        sw.parse_param("opt=adam,lamb")
    with pytest.raises(OptionError, match="--param lr must be a finite number"):
        sw.parse_param("lr=1e-3,nan")
    with pytest.raises(OptionError, match="--mixup and --cutmix cannot be used together"):  # checked per config
        sw.expand(base, [sw.parse_param("mixup=true"), sw.parse_param("cutmix=true")], "grid")


def test_kfold_coverage_and_names(kmnist):
    base = _base(kmnist, n_folds=3, fold=0)
    plan = sw.plan(base, [sw.parse_param("lr=1e-3,3e-3")], "line", 3, "all")
    assert len(plan) == 6 and len({j.name for j in plan}) == 6
    for cid in {sw.config_id(j.config) for j in plan}:
        assert sorted(j.fold for j in plan if sw.config_id(j.config) == cid) == [0, 1, 2]
    assert [j.fold for j in sw.plan(base, [sw.parse_param("lr=1e-3")], "line", 3, "0,2")] == [0, 2]
    with pytest.raises(OptionError, match="--folds must be within 0..2"):
        sw.plan(base, [sw.parse_param("lr=1e-3")], "line", 3, "5")


@pytest.fixture(scope="module")
def swept(kmnist, tmp_path_factory):
    root = tmp_path_factory.mktemp("sweep")
    base = _base(kmnist, n_folds=2, fold=0)
    params = [sw.parse_param("lr=3e-4,3e-3")]
    plan = sw.plan(base, params, "line", 2, "all")
    outcome = sw.run_sweep(base, plan, root / "s1", jobs=1, threads=1)
    return base, params, plan, root, outcome


def test_sweep_runs_results_plot_and_resume(swept):
    base, params, plan, root, outcome = swept
    assert set(outcome.values()) == {"trained"} and len(outcome) == 4
    rows = sw.results(root / "s1", plan)
    assert [r["folds_done"] for r in rows] == [2, 2]
    assert rows[0]["acc_mean"] >= rows[1]["acc_mean"] and rows[0]["lr"] == 3e-3  # best first
    png = sw.write_results(root / "s1", rows, params, base)
    assert Image.open(png).size[0] > 200
    lines = (root / "s1" / "results.csv").read_text().splitlines()
    assert lines[0].startswith("config,lr,folds_done") and len(lines) == 3
    recipe = sw.best_recipe(rows, base, root / "s1" / "best.toml")
    from kmnist_fa.config.recipes import load_recipe

    assert load_recipe(recipe)["lr"] == 3e-3
    again = sw.run_sweep(base, plan, root / "s1", jobs=1, threads=1)
    assert set(again.values()) == {"skipped"}
    # a finished member whose run.json is damaged is reported and left alone, never deleted and retrained
    shutil.copytree(root / "s1", root / "damaged")
    member = root / "damaged" / plan[0].name
    (member / "run.json").write_text('{"format_version": 2, "name": 7}')
    again = sw.run_sweep(base, plan, root / "damaged", jobs=1, threads=1)
    assert again[plan[0].name].startswith("unreadable: ") and "run.json" in again[plan[0].name]
    assert (member / "model.pth").exists() and set(list(again.values())[1:]) == {"skipped"}
    (member / "run.json").unlink()
    assert sw.run_sweep(base, plan, root / "damaged", jobs=1, threads=1)[plan[0].name].startswith("unreadable: ")
    assert (member / "model.pth").exists()


@pytest.mark.slow
def test_jobs_2_gives_the_same_results(swept):
    base, params, plan, root, _ = swept
    outcome = sw.run_sweep(base, plan, root / "s2", jobs=2, threads=1)
    assert set(outcome.values()) == {"trained"}
    a = {r["config"]: r["fold_accs"] for r in sw.results(root / "s1", plan)}
    b = {r["config"]: r["fold_accs"] for r in sw.results(root / "s2", plan)}
    assert a == b


def test_sweep_cli(kmnist, tmp_path):
    r = CliRunner().invoke(app, ["sweep", "lenet5", "--param", "lr=1e-2", "--epochs", "3", "--bs", "16", "--data",
                                 str(kmnist.root), "--models-dir", str(tmp_path), "--name", "cli", "--save-recipe",
                                 str(tmp_path / "best.toml")])
    assert r.exit_code == 0, r.output
    assert "lr-0.01" in r.output and (tmp_path / "best.toml").exists() and (tmp_path / "cli" / "sweep.png").exists()
    r = CliRunner().invoke(app, ["sweep", "lenet5", "--param", "lr=1e-2", "--epochs", "3", "--bs", "16", "--data",
                                 str(kmnist.root), "--models-dir", str(tmp_path), "--name", "cli", "--json"])  # all finished: skipped
    res = json.loads(r.stdout)
    assert r.exit_code == 0 and res["outcome"] == {"lr-0.01-holdout": "skipped"}
    assert res["results"][0]["acc_mean"] > 0.5 and res["best_recipe"].endswith("best.toml")
    r = CliRunner().invoke(app, ["sweep", "lenet5", "--param", "lr", "--models-dir", str(tmp_path)])
    assert r.exit_code == 2 and "expected NAME=V1,V2" in r.output


def _children(pid: int) -> set[int]:
    try:
        return {int(c) for c in open(f"/proc/{pid}/task/{pid}/children").read().split()}
    except FileNotFoundError:
        return set()


def _alive(pid: int) -> bool:
    try:
        return open(f"/proc/{pid}/stat").read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


@pytest.mark.skipif(not __import__("os").path.exists("/proc/self/task"), reason="reads worker processes from /proc")
@pytest.mark.slow
@pytest.mark.parametrize("sig", ["SIGKILL", "SIGTERM"])
def test_workers_of_a_killed_sweep_stop_and_its_trials_are_retried(kmnist, tmp_path, sig):
    """SIGKILL and SIGTERM reach the sweep's process, not its workers: after SIGKILL they notice the parent gone;
    SIGTERM the sweep passes on as Ctrl-C and exits 143. Either way no worker trains on, orphaned."""
    import os
    import signal
    import subprocess
    import sys
    import time

    cmd = [sys.executable, "-m", "kmnist_fa", "sweep", "lenet5", "--param", "lr=1e-3,2e-3", "--epochs", "300",
           "--jobs", "2", "--data", str(kmnist.root), "--models-dir", str(tmp_path), "--name", "killed"]
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    deadline = time.time() + 120
    while not list((tmp_path / "killed").glob("*/run.json")) and time.time() < deadline:  # training has begun
        time.sleep(0.5)
    workers = set().union(*(_children(c) | {c} for c in _children(p.pid)))  # the pool and its resource tracker
    assert workers and p.poll() is None
    p.send_signal(getattr(signal, sig))
    assert p.wait(timeout=60) == (-signal.SIGKILL if sig == "SIGKILL" else 143)
    deadline = time.time() + 30
    while any(map(_alive, workers)) and time.time() < deadline:
        time.sleep(0.2)
    assert not any(map(_alive, workers))
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    storage = JournalStorage(JournalFileBackend(str(tmp_path / "killed" / "study.journal")))
    (name,) = optuna.get_all_study_names(storage)
    states = sorted(t.state.name for t in optuna.load_study(study_name=name, storage=storage).trials)
    assert states == ["FAIL", "FAIL", "WAITING", "WAITING"]  # both stopped trials wait to be run again
