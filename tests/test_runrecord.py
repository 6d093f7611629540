"""run.json as a contract: typed, validated, migrated; hostile edits give one-line errors, never NaN."""
import copy
import json
import math
import shutil
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from kmnist_fa.cli import app
from kmnist_fa.core.errors import RunError
from kmnist_fa.runs.paths import reference_dir
from kmnist_fa.runs.record import FORMAT_VERSION, RunRecord
from kmnist_fa.runs.store import Unreadable, list_runs

runner = CliRunner()


def _leaves(o, prefix=()):
    """Key paths to every value in parsed JSON (the first items of lists only: they are all alike)."""
    out = [prefix] if prefix else []
    if isinstance(o, dict):
        for k, v in o.items():
            out += _leaves(v, prefix + (k,))
    elif isinstance(o, list):
        for i, v in enumerate(o[:2]):
            out += _leaves(v, prefix + (i,))
    return out


def _set(d, path, value=None, delete=False):
    for k in path[:-1]:
        d = d[k]
    if delete:
        del d[path[-1]]
    else:
        d[path[-1]] = value


HOSTILE = st.one_of(
    st.none(), st.booleans(), st.integers(-10**30, 10**30), st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=30), st.just("<img src=x onerror=alert(1)>"), st.just("[red]x[/]"), st.just("x" * 5000),
    st.lists(st.integers(0, 3), max_size=3), st.dictionaries(st.text(max_size=4), st.integers(), max_size=2),
    st.just(-1), st.just(0), st.just(0.0), st.just("1"))


def _check_loaded(rec: RunRecord):
    """What every record that loads must satisfy: what predictions and listings rely on."""
    assert math.isfinite(rec.norm.mean) and math.isfinite(rec.norm.std) and rec.norm.std > 0
    assert isinstance(rec.lr, float) and math.isfinite(rec.lr) and rec.lr > 0
    assert len(rec.classes) >= 2 and all(isinstance(c, str) for c in rec.classes)
    assert 0 <= rec.epochs_done <= rec.total_epochs and len(rec.history) == rec.epochs_done
    for row in rec.history:
        assert all(v is None or (isinstance(v, (int, float)) and math.isfinite(v)) for v in row.values())
    assert RunRecord.from_json(json.loads(json.dumps(rec.to_json()))) == rec  # what it writes, it reads


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
@pytest.mark.slow
def test_mutated_run_json_loads_valid_or_fails_in_one_line(lenet_run, data):
    base = json.loads((lenet_run.path / "run.json").read_text())
    d = copy.deepcopy(base)
    path = data.draw(st.sampled_from(_leaves(base)), label="field")
    action = data.draw(st.sampled_from(["replace", "delete"]), label="action")
    _set(d, path, data.draw(HOSTILE, label="value") if action == "replace" else None, delete=action == "delete")
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp) / "models" / "victim"
        run.mkdir(parents=True)
        (run / "run.json").write_text(json.dumps(d))  # NaN/Infinity written as JSON's non-standard literals
        try:
            rec = RunRecord.read(run)
        except RunError as e:
            msg = str(e)
            assert "\n" not in msg and msg.startswith(str(run / "run.json")), msg
        else:
            _check_loaded(rec)
        # the listing goes on whatever the file holds; show gives a table or one line and exit 2
        r = runner.invoke(app, ["models", "--models-dir", str(run.parent)])
        assert r.exit_code == 0 and r.exception is None, r.output
        r = runner.invoke(app, ["models", "--models-dir", str(run.parent), "show", "victim"])
        assert r.exception is None or isinstance(r.exception, SystemExit), r.exception
        assert r.exit_code == 0 or (r.exit_code == 2 and r.output.strip().count("\n") == 0), r.output


@pytest.mark.parametrize("edit,msg", [
    (lambda d: d.update(format_version="1"), "format_version: must be a whole number from 1 to 3, got '1'"),
    (lambda d: d.update(format_version=None), "format_version: must be a whole number"),
    (lambda d: d["config"].update(arch=["lenet5"]), "config: ARCH must be a string"),
    (lambda d: d.update(best="high"), "best: expected a table, got 'high'"),
    (lambda d: d.pop("config"), "config: expected a table"),
    (lambda d: d.pop("classes"), "classes: missing"),
    (lambda d: d.pop("norm"), "norm: missing"),
    (lambda d: d.pop("n_params"), "n_params: missing"),
    (lambda d: d["norm"].update(std=0), "norm.std: must be positive, got 0.0"),
    (lambda d: d["norm"].update(std=float("nan")), "norm.std: must be a finite number, got nan"),
    (lambda d: d["config"].update(lr=float("inf")), "config: --lr must be a finite number, got inf"),
    (lambda d: d["config"].update(opt="adamw"), "config: --opt must be one of"),
    (lambda d: d.update(status="done"), "status: must be running or complete"),
    (lambda d: d.update(name="../../etc"), "name: '../../etc' is not a valid run name"),
])
def test_first_format_hostile_edits(tmp_path, edit, msg):
    """The issue's reported variants, on a shipped format-1 run.json."""
    run = tmp_path / "r"
    shutil.copytree(reference_dir() / "lenet5", run)
    d = json.loads((run / "run.json").read_text())
    edit(d)
    (run / "run.json").write_text(json.dumps(d))
    with pytest.raises(RunError) as e:
        RunRecord.read(run)
    assert msg in str(e.value) and str(e.value).startswith(str(run / "run.json"))


def test_reference_runs_migrate_from_format_1(tmp_path):
    for name in ("lenet5", "alexnet5", "alexnet7"):
        rec = RunRecord.read(reference_dir() / name)
        assert rec.complete and rec.arch == name and rec.config.split.full and rec.extra.keys() == {"reference", "check"}
        out = tmp_path / name
        out.mkdir()
        rec.write(out)
        written = json.loads((out / "run.json").read_text())
        assert written["format_version"] == FORMAT_VERSION and "arch" not in written and "metrics" not in written
        assert RunRecord.read(out) == rec


def test_format_2_counted_epochs_from_0_and_migrates_to_counting_from_1(tmp_path):
    rec = RunRecord.read(reference_dir() / "fast")
    assert [h["epoch"] for h in rec.history] == list(range(1, rec.epochs_done + 1)) and rec.best.epoch == rec.epochs_done
    old = rec.to_json() | {"format_version": 2, "best": {**vars(rec.best), "epoch": rec.best.epoch - 1},
                           "history": [{**h, "epoch": h["epoch"] - 1} for h in rec.history]}
    (tmp_path / "run.json").write_text(json.dumps(old))
    assert RunRecord.read(tmp_path) == rec
    old["history"][0]["epoch"] = 1  # a format-2 history must start at 0
    (tmp_path / "run.json").write_text(json.dumps(old))
    with pytest.raises(RunError, match=r"history\[0\]\.epoch: must be 1, got 2"):
        RunRecord.read(tmp_path)


def test_oversized_and_deeply_nested_run_json(tmp_path):
    (tmp_path / "run.json").write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(RunError, match="nested too deeply|corrupt JSON"):
        RunRecord.read(tmp_path)
    with open(tmp_path / "run.json", "wb") as f:
        f.truncate(17 << 20)
    with pytest.raises(RunError, match="larger than 16 MiB"):
        RunRecord.read(tmp_path)


def test_models_lists_good_runs_and_marks_a_bad_one(lenet_run, tmp_path):
    for name in ("good", "bad"):
        shutil.copytree(lenet_run.path, tmp_path / name)
    d = json.loads((tmp_path / "bad" / "run.json").read_text())
    d["norm"]["std"] = 0
    (tmp_path / "bad" / "run.json").write_text(json.dumps(d))
    found = list_runs(tmp_path)
    assert [type(r).__name__ for r in found] == ["Unreadable", "RunRecord"]
    assert isinstance(found[0], Unreadable) and "norm.std: must be positive" in found[0].reason
    r = runner.invoke(app, ["models", "--models-dir", str(tmp_path)])
    assert r.exit_code == 0 and "good" in r.output and "unreadable" in r.output
    rows = json.loads(runner.invoke(app, ["models", "--models-dir", str(tmp_path), "--json"]).output)
    assert [(x["name"], x["status"]) for x in rows][:2] == [("bad", "unreadable"), ("good", "complete")]
    assert {x["name"] for x in rows[2:] if x["reference"]} == {  # the shipped runs follow
        "reference/lenet5", "reference/alexnet5", "reference/alexnet7", "reference/fast", "reference/fast-pseudo",
        "reference/default.g1", "reference/default"}
    # commands that use the bad run refuse it in one line instead of predicting NaN or class 0
    for args in (["predict", str(tmp_path / "x.png"), "-m", str(tmp_path / "bad")], ["evaluate", str(tmp_path / "bad")]):
        r = runner.invoke(app, args)
        assert r.exit_code == 2 and r.output.strip().count("\n") == 0 and "norm.std: must be positive" in r.output
