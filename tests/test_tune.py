"""`kmnist-fa tune` and the search engine: ranges, pruning, concurrent workers, crash recovery."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from kmnist_fa.cli import app
from kmnist_fa.config.options import TrainConfig
from kmnist_fa.core.errors import OptionError
from kmnist_fa.pipelines import search
from kmnist_fa.runs.record import RunRecord

REPO = Path(__file__).resolve().parents[1]


def test_parse_ranges_and_choices():
    assert search.parse_param("lr=1e-4:1e-2:log") == search.Param("lr", low=1e-4, high=1e-2, log=True)
    assert search.parse_param("epochs=2:8") == search.Param("epochs", low=2, high=8)
    assert isinstance(search.parse_param("epochs=2:8").low, int)
    assert search.parse_param("aug=light,heavy,light").choices == ("light", "heavy")
    assert str(search.parse_param("dropout=0.3:0.6")) == "dropout=0.3:0.6"
    for spec, msg in [("lr=1e-2:1e-4", "LOW must be below HIGH"), ("wd=0:0.1:log", "log range needs LOW > 0"),
                      ("aug=a:b", "needs a numeric option"), ("lr=1:2:3", "LOW:HIGH or LOW:HIGH:log"),
                      ("lr=-1:1", "--param lr must be"), ("epochs=1.5:3", "not a valid value"),
                      ("arch=lenet5", "not sweepable")]:
        with pytest.raises(OptionError, match=msg):
            search.parse_param(spec)
    with pytest.raises(OptionError, match="ranges need `kmnist-fa tune`"):
        search.parse_param("lr=1e-3:1e-2", ranges=False)


def _tune(kmnist, models, *args, **kw):
    return CliRunner().invoke(app, ["tune", "lenet5", "--epochs", "1", "--data", str(kmnist.root), "--models-dir",
                                    str(models), "--threads", "1", *args], **kw)


@pytest.mark.slow
def test_tune_cli_outputs_resume_and_extend(kmnist, tmp_path):
    args = ["-p", "lr=1e-3:1e-2:log", "-p", "aug=none,light", "--trials", "3", "--pruner", "none", "--study", "s",
            "--json"]
    r = _tune(kmnist, tmp_path, *args, "--save-recipe", str(tmp_path / "best.toml"), "--track", "tensorboard")
    assert r.exit_code == 0, r.output
    assert all(any((p / "tensorboard").iterdir()) for p in (tmp_path / "s").glob("trial*"))  # every member tracked
    res = json.loads(r.stdout)
    assert [t["state"] for t in res["trials"]] == ["complete"] * 3
    assert set(res["outcome"].values()) == {"trained"} and len(res["outcome"]) == 3
    for t in res["trials"]:
        assert 1e-3 <= t["lr"] <= 1e-2 and t["aug"] in ("none", "light") and t["acc_mean"] > 0.2  # above chance (0.1): the trial trained
        rec = RunRecord.read(tmp_path / "s" / f"trial{t['trial']:03d}-holdout")
        assert rec.config.optim.lr == t["lr"] and rec.config.reg.aug == t["aug"]
        assert rec.config.extra["tune"] == {"study": "s", "trial": t["trial"], "params": {"lr": t["lr"], "aug": t["aug"]}}
        assert rec.best.accuracy == t["acc_mean"] == t["holdout"]
    best = max(res["trials"], key=lambda t: t["acc_mean"])
    from kmnist_fa.config.recipes import load_recipe

    assert load_recipe(tmp_path / "best.toml")["lr"] == best["lr"]
    lines = (tmp_path / "s" / "results.csv").read_text().splitlines()
    assert lines[0].startswith("trial,state,lr,aug,holdout,acc_mean,acc_sd") and len(lines) == 4
    assert {"history", "slice", "importance", "contour"} <= set(res["files"])
    # the same command again: nothing to do; a larger budget adds exactly the missing trials
    r = _tune(kmnist, tmp_path, *args)
    assert r.exit_code == 0 and json.loads(r.stdout)["outcome"] == {}
    r = _tune(kmnist, tmp_path, *[a if a != "3" else "4" for a in args])
    res = json.loads(r.stdout)
    assert list(res["outcome"]) == ["trial003-holdout"] and len(res["trials"]) == 4
    # continuing with other fixed options is refused in one line, naming what differs
    r = _tune(kmnist, tmp_path, "-p", "lr=1e-3:1e-1:log", "--trials", "4", "--study", "s")
    assert r.exit_code == 2 and "was started with other space" in r.output and len(r.output.strip().splitlines()) == 1
    r = _tune(kmnist, tmp_path, "-p", "lr=1e-3,1e-2:3", "--study", "t")
    assert r.exit_code == 2 and "--param lr: '1e-3,1e-2' is not a valid value" in r.output
    r = _tune(kmnist, tmp_path, "-p", "lr=1e-3:1e-2", "--sampler", "grid", "--study", "t")
    assert r.exit_code == 2 and "--sampler grid: needs choices" in r.output


def test_unpromising_trial_is_pruned(kmnist, tmp_path):
    base = TrainConfig.build(arch="lenet5", epochs=2, data=str(kmnist.root), aug="none")
    spec = search.StudySpec(root=str(tmp_path / "p"), study="p", base=base.to_dict(), kind="tune", budget=5,
                            params=[search.parse_param("lr=1e-6,3e-3")], folds=[None], pruner="median", epochs=2,
                            identity={"space": ["lr"]})
    study = search.open_study(spec)
    for lr in (3e-3, 3e-3, 3e-3, 3e-3, 1e-6):  # four good trials set the median; a hopeless one follows
        study.enqueue_trial({"lr": lr})
    outcome = search.run_workers(spec, jobs=1, threads=1)
    rows = search.trial_rows(study, spec)
    assert [r["state"] for r in rows] == ["complete"] * 4 + ["pruned"]
    assert outcome["trial004-holdout"] == "pruned" and rows[4]["acc_mean"] is None
    pruned = RunRecord.read(tmp_path / "p" / "trial004-holdout")
    assert not pruned.complete and pruned.epochs_done == 2  # stopped after its checkpoint: resumable by hand
    assert study.trials[4].intermediate_values.keys() == {0, 1}


def _cli(models: Path, kmnist, *args) -> list[str]:
    return [sys.executable, "-m", "kmnist_fa", "tune", "lenet5", "--data", str(kmnist.root), "--models-dir",
            str(models), "--threads", "1", "--pruner", "none", *args]


@pytest.mark.slow
def test_two_processes_share_one_study(kmnist, tmp_path):
    cmd = _cli(tmp_path, kmnist, "-p", "lr=1e-3:1e-2:log", "--trials", "4", "--epochs", "1", "--study", "c")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    for p in procs:
        _, e = p.communicate(timeout=300)
        assert p.returncode == 0, e
    spec = search.StudySpec(root=str(tmp_path / "c"), study="c", base={}, params=[], folds=[None])
    import optuna

    trials = optuna.load_study(study_name="c", storage=search._storage(spec)).trials
    assert sorted(t.number for t in trials) == [0, 1, 2, 3] and {t.state.name for t in trials} == {"COMPLETE"}
    assert len({t.params["lr"] for t in trials}) == 4  # the two workers drew differently from the start
    members = sorted(p.name for p in (tmp_path / "c").iterdir() if p.is_dir())
    assert members == [f"trial00{i}-holdout" for i in range(4)]
    assert all(RunRecord.read(tmp_path / "c" / m).epochs_done == 1 for m in members)


@pytest.mark.slow
def test_killed_tune_resumes_its_trial(kmnist, tmp_path):
    # enough epochs that the kill after the first lands well before the trial could finish
    args = ["-p", "lr=3e-3,1e-3", "--sampler", "grid", "--trials", "2", "--epochs", "8", "--study", "k", "--json"]
    p = subprocess.Popen(_cli(tmp_path, kmnist, *args), cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    first = tmp_path / "k" / "trial000-holdout"
    deadline = time.time() + 240
    while time.time() < deadline:
        try:
            if RunRecord.read(first).epochs_done >= 1:
                break
        except Exception:
            pass
        time.sleep(0.2)
    p.send_signal(signal.SIGKILL)
    p.wait()
    assert not RunRecord.read(first).complete
    r = subprocess.run(_cli(tmp_path, kmnist, *args), cwd=REPO, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)
    assert res["outcome"]["trial000-holdout"] == "resumed"  # the retry continued the dead attempt's run
    assert [(t["trial"], t["state"]) for t in res["trials"]] == [(0, "complete"), (1, "complete")]
    rec = RunRecord.read(first)
    assert rec.complete and rec.epochs_done == 8
    import optuna

    spec = search.StudySpec(root=str(tmp_path / "k"), study="k", base={}, params=[], folds=[None])
    states = [t.state.name for t in optuna.load_study(study_name="k", storage=search._storage(spec)).trials]
    assert states.count("FAIL") == 1 and states.count("COMPLETE") == 2  # the dead attempt, kept as failed


def test_workers_take_free_gpus(tmp_path):
    held = [search.claim_device(2, 2, str(tmp_path)) for _ in range(4)]
    assert [d for d, _ in held] == [0, 1, 0, 1] and all(f is not None for _, f in held)
    held[1][1].close()  # the worker on GPU 1 finished: the next one takes its place
    assert search.claim_device(2, 2, str(tmp_path))[0] == 1


def test_rdb_storage_beats_and_retries_a_silent_worker(kmnist, tmp_path):
    """A worker on another machine that stops beating (no pid to check) is failed and its trial retried."""
    import sqlite3

    from optuna.trial import TrialState

    base = TrainConfig.build(arch="lenet5", epochs=1, lr=3e-3, data=str(kmnist.root), aug="none")
    db = tmp_path / "s.db"
    spec = search.StudySpec(root=str(tmp_path / "r"), study="r", base=base.to_dict(), kind="tune", budget=2,
                            params=[search.parse_param("wd=0,0.01")], folds=[None], storage=f"sqlite:///{db}")
    study = search.open_study(spec)
    lost = study.ask()  # "another machine" claims trial 0, beats once, and goes silent
    lost.set_user_attr("worker", {"host": "elsewhere", "pid": 1})
    spec.params[0].suggest(lost)
    with search._heartbeat(study, lost):
        pass
    with sqlite3.connect(db) as c:
        c.execute("update trial_heartbeats set heartbeat = datetime('now', '-1 hour')")
    outcome = search.run_workers(spec, jobs=1, threads=1)
    trials = study.get_trials()
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.COMPLETE, TrialState.COMPLETE]
    assert search.original(trials[1]) == 0 and trials[1].params == trials[0].params  # the retry of trial 0
    assert set(outcome) == {"trial000-holdout", "trial002-holdout"}  # folders follow the original trial
    with sqlite3.connect(db) as c:
        assert c.execute("select count(*) from trial_heartbeats").fetchone()[0] == 3


def test_storage_passwords_stay_out_of_messages():
    spec = search.StudySpec(root="/nonexistent", study="x", base={}, params=[], folds=[None],
                            storage="postgresql+nodriver://user:s3cret@db.example/kmnist")
    with pytest.raises(OptionError) as e:
        search._storage(spec)
    assert "s3cret" not in str(e.value) and "user:***@db.example" in str(e.value)


def test_damaged_journal_is_one_line(kmnist, tmp_path):
    (tmp_path / "st").mkdir()
    for junk in (b"\xff\xfe\x00 not text", b'{"op_code": 0, "worker_id": "x", "study_name": "st", "directions": [1]}\n'
                                          b'{"op_code": 4, "trunc'):
        (tmp_path / "st" / "study.journal").write_bytes(junk)
        r = _tune(kmnist, tmp_path, "-p", "lr=1e-3:1e-2", "--study", "st")
        assert r.exit_code == 2 and "study.journal: the study's storage is damaged" in r.output, r.output
        assert len(r.output.strip().splitlines()) == 1


def test_missing_data_is_refused_before_any_trial(kmnist, tmp_path):
    for cmd in ("tune", "sweep"):
        r = CliRunner().invoke(app, [cmd, "lenet5", "-p", "lr=1e-3,1e-2", "--data", str(tmp_path / "nothere"),
                                     "--models-dir", str(tmp_path)])
        assert r.exit_code == 2 and "is not a folder" in r.output and len(r.output.strip().splitlines()) == 1
    assert not any(tmp_path.iterdir())  # no study or sweep folder was started


def _draw(root: Path, seed: int, workers: int, rounds: int) -> list[dict]:
    """Parameters drawn by `workers` that open one study together, each as its own process would, and claim
    their trials side by side (none finished before the others draw), `rounds` times."""
    spec = search.StudySpec(root=str(root), study="w", base={}, folds=[None], budget=workers * rounds, seed=seed,
                            params=[search.parse_param("lr=1e-4:1e-1:log"), search.parse_param("aug=none,light,heavy")])
    studies = [search.open_study(spec) for _ in range(workers)]
    drawn = []
    for _ in range(rounds):
        trials = [search.claim(st, spec) for st in studies]
        drawn += [{p.name: p.suggest(t) for p in spec.params} for t in trials]
        for st, t in zip(studies, trials):
            st.tell(t, 0.5)
    return drawn


def test_workers_started_together_draw_different_parameters(tmp_path):
    drawn = _draw(tmp_path / "two", seed=0, workers=2, rounds=3)
    assert len({search.config_id(d) for d in drawn}) == 6  # with one seed for all, each pair drew alike


def test_one_worker_study_is_reproducible_from_its_seed(tmp_path):
    first = _draw(tmp_path / "a", seed=7, workers=1, rounds=4)
    assert _draw(tmp_path / "b", seed=7, workers=1, rounds=4) == first
    assert _draw(tmp_path / "c", seed=8, workers=1, rounds=4) != first


def test_storage_that_is_neither_url_nor_journal_is_refused(kmnist, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for storage in ("notaurl", "postgres:/host/db"):
        r = _tune(kmnist, tmp_path / "m", "-p", "lr=1e-3:1e-2", "--pruner", "none", "--storage", storage)
        assert r.exit_code == 2 and "neither a storage URL" in r.output and "ending in .journal" in r.output, r.output
        assert len(r.output.strip().splitlines()) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no journal, no study folder
