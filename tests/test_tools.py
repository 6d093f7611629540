"""Release tooling in tools/: the one CV tool (levers, defaults, ensembles) runs on the toolkit's own search engine."""
import importlib.util
import json
import statistics
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from torch import nn

from kmnist_fa.models.registry import ARCHS, ArchSpec
from kmnist_fa.runs.record import RunRecord

TOOLS = Path(__file__).resolve().parents[1] / "tools"


def _load(name):
    spec = importlib.util.spec_from_file_location(name, TOOLS / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def tinynet(n_classes: int = 10, bn: bool = False, dropout: float = 0.0) -> nn.Sequential:
    """An architecture the CV tool has never heard of (registered by the test, not by the package)."""
    body = nn.Sequential(nn.Conv2d(1, 8, 3, stride=2), nn.ReLU(), nn.AdaptiveAvgPool2d(4))
    return nn.Sequential(body, nn.Sequential(nn.Flatten(), nn.Linear(128, n_classes)))


@pytest.fixture
def tiny_arch(monkeypatch):
    monkeypatch.setitem(ARCHS, "tinynet", ArchSpec("tinynet", tinynet, "test", False, 0.0))
    return "tinynet"


def _mtimes(root: Path, pattern: str) -> dict:
    return {p: p.stat().st_mtime_ns for p in root.rglob(pattern)}


@pytest.mark.slow
def test_select_smoke_chooses_by_cv_for_any_arch_and_resumes(kmnist, tiny_arch, tmp_path, monkeypatch):
    cv = _load("cv")
    # one TTA length, the rule's: per-image TTA draws are the suite's costliest step
    monkeypatch.setattr(cv, "TTA_NS", (cv.TTA_N,))
    monkeypatch.setattr(cv, "SELECT_MODE", f"tta:train:{cv.TTA_N}:0.25")
    out = tmp_path / "cv"
    argv = ["select", "--data", str(kmnist.root), "--out", str(out), "--smoke", "--jobs", "1",
            "--archs", f"lenet5,{tiny_arch}"]
    summary = cv.main(argv)
    table = summary["candidates"]
    # the recorded LeNet5 candidates, and two derived ones for the architecture the tool does not know
    assert set(table) == {"lenet5-light-40", "lenet5-heavy-60", "tinynet-light-10", "tinynet-heavy-10"}
    assert all(r["folds"] == 2 for r in table.values())
    for arch in ("lenet5", tiny_arch):  # the selection rule: best mean TTA accuracy of the architecture's candidates
        own = [k for k in table if table[k]["arch"] == arch]
        assert summary["best"][arch] == max(own, key=lambda k: table[k]["modes"][cv.SELECT_MODE][0])
    # fold members are sweep runs of one study per architecture, each with the one cached prediction file
    for arch in ("lenet5", tiny_arch):
        members = sorted(p.name for p in (out / arch).iterdir() if (p / "run.json").exists())
        assert len(members) == 4 and all((out / arch / m / cv.PREDS_FILE).exists() for m in members)
    # ensembles of the per-architecture choices: every combination, the best by accuracy, the smaller on a tie
    ens = summary["ensembles"]
    assert sorted(len(e["members"]) for e in ens.values()) == [1, 1, 2]
    assert all(len(e["folds"]) == 2 and e["mode"] == cv.SELECT_MODE for e in ens.values())
    assert summary["best_ensemble"] == max(ens, key=lambda k: (ens[k]["acc"][0], -len(ens[k]["members"])))
    for arch in ("lenet5", tiny_arch):
        full = RunRecord.read(summary["full_runs"][arch])
        assert full.complete and full.config.split.full and full.config.optim.epochs == 1
        assert full.config.model.arch == arch
    assert json.loads((out / "results.json").read_text())["best"] == summary["best"]
    stamps, caches = _mtimes(out, "run.json"), _mtimes(out, "*.npz")
    again = cv.main(argv)  # nothing is trained or predicted again
    assert again["best"] == summary["best"] and again["ensembles"] == summary["ensembles"]
    assert _mtimes(out, "run.json") == stamps and _mtimes(out, "*.npz") == caches


def test_candidates_for_any_registered_arch(tiny_arch, monkeypatch, capsys):
    """`select` is not limited to the report's architectures: candidates come from the registry and recipes."""
    cv = _load("cv")
    assert cv.candidates(["alexnet7"]) == {k: c for k, c in cv.CANDIDATES.items() if c["arch"] == "alexnet7"}
    tiny = cv.candidates([tiny_arch])  # no recipe: the toolkit's defaults (10 epochs, lr_find's LR)
    assert tiny == {f"tinynet-{a}-10": dict(arch="tinynet", lr=None, epochs=10, aug=a) for a in ("light", "heavy")}
    monkeypatch.setattr(cv, "CANDIDATES", {})  # with no recorded candidates, the default recipe's LR and epochs
    assert cv.candidates(["lenet5"]) == {f"lenet5-{a}-60": dict(arch="lenet5", lr=3e-3, epochs=60, aug=a)
                                         for a in ("light", "heavy")}
    jobs = cv.candidate_jobs(cv.candidates([tiny_arch, "lenet5"]), "data", [0, 1, 2])
    assert list(jobs) == [tiny_arch, "lenet5"]
    base, tjobs, names = jobs[tiny_arch]
    assert base.model.arch == tiny_arch and base.split.n_folds == 3 and len(tjobs) == 6 and len(names) == 2
    assert sorted(cv.report_recipes(["lenet5"])) == ["report-lenet5", "report-lenet5-aug"]
    assert cv.report_recipes([tiny_arch]) == []
    with pytest.raises(SystemExit):
        cv.main(["select", "--data", "d", "--out", "o", "--archs", "lenet5,nosuch"])
    assert "unknown architecture 'nosuch'" in capsys.readouterr().err


def test_cache_blends_tta_exactly_like_predict(lenet_run, tmp_path):
    """Every subcommand scores TTA settings from one cache of parts; each must equal the toolkit's own prediction."""
    import shutil

    from kmnist_fa.config.options import TtaSettings
    from kmnist_fa.infer.predict import load_run, predict_probs, run_data, validation_set

    cv = _load("cv")
    run_dir = tmp_path / "run"
    shutil.copytree(lenet_run.path, run_dir)
    assert cv.fold_preds(run_dir) == run_dir / cv.PREDS_FILE
    z = np.load(cv.fold_preds(run_dir))
    run = load_run(run_dir)
    x, y, _ = validation_set(run, run_data(run))
    assert (z["labels"] == y).all()
    np.testing.assert_allclose(cv.probs_for(z, "plain"), predict_probs(run, x).numpy(), atol=1e-6)
    for n in cv.TTA_NS:
        np.testing.assert_allclose(cv.probs_for(z, f"tta:train:{n}:0.25"),
                                   predict_probs(run, x, tta=True, n=n).numpy(), atol=1e-6)
    assert cv.SELECT_MODE in cv.modes()  # `select` scores from the same cache
    light = load_run(run_dir, tta=TtaSettings(aug="light", beta=0.5))
    np.testing.assert_allclose(cv.probs_for(z, "tta:light:4:0.5"), predict_probs(light, x, tta=True, n=4).numpy(),
                               atol=1e-6)
    assert cv.fold_accuracy([z], "plain") == pytest.approx(float((predict_probs(run, x).numpy().argmax(1) == y).mean()))


def test_one_se_rule_picks_the_cheapest_option_within_the_paired_standard_error(monkeypatch):
    cv = _load("cv")
    # the docs' case (reference-models.md): 1,200 images a fold, accuracies as image counts
    docs = {"fast-pseudo-long-ens + fast-kd-long [tta:train:4:0.75]": [1186, 1192, 1191, 1193, 1191],
            "fast-pseudo-long-ens [tta:train:4:0.75]": [1185, 1191, 1192, 1192, 1191],
            "fast-pseudo-long [last epoch]": [1186, 1192, 1189, 1188, 1190]}
    folds = {o: [c / 1200 for c in counts] for o, counts in docs.items()}
    choice = cv.one_se_choice(folds, dict(zip(docs, (10, 5, 1))))
    best, shipped, plain = docs
    assert choice["best"] == best and choice["chosen"] == shipped
    rows = choice["candidates"]
    assert list(rows) == [plain, shipped, best]  # cheapest first; the refused cheaper option is listed
    # the shipped default: 0.03 pp below the best, SE 0.03 pp (both exactly 0.4 images: a tie that qualifies)
    assert rows[shipped]["mean_diff"] == pytest.approx(0.4 / 1200) and rows[shipped]["se"] == pytest.approx(0.4 / 1200)
    assert rows[shipped]["within"] and rows[best]["within"] and rows[best]["mean_diff"] == rows[best]["se"] == 0
    # fast-pseudo-long plain: 0.13 pp below, SE 0.08 pp
    assert round(100 * rows[plain]["mean_diff"], 2) == 0.13 and round(100 * rows[plain]["se"], 2) == 0.08
    assert not rows[plain]["within"]
    # the tie stands when one side is a last-epoch score, float32 in the training history (here 7e-9 apart)
    folds[best] = [float(np.float32(a)) for a in folds[best]]
    assert cv.one_se_choice(folds, dict(zip(docs, (10, 5, 1))))["chosen"] == shipped

    best_folds = [0.90, 0.92, 0.94, 0.96]
    options = {  # name: (cost, per-fold difference from the best)
        "best": (10, [0, 0, 0, 0]),
        "tight": (1, [0.005] * 4),  # as close on average as "noisy", but on every fold: SE 0, refused
        "far": (1, [0.1, 0.12, 0.08, 0.1]),  # far below: refused, listed only as one of the NEAR cheaper ones
        "noisy": (2, [0.04, -0.03, 0.03, -0.02]),  # mean 0.005, SE 0.018: within
        "noisy-better": (2, [0.03, -0.03, 0.03, -0.02]),  # within, same cost, higher mean: chosen
        "dear": (5, [0.01, 0, 0.01, -0.01]),  # within, but dearer
        "dearer-out": (5, [0.02, 0.03, 0.02, 0.03]),  # refused, and dearer than the chosen: not listed
    }
    folds = {o: [b - d for b, d in zip(best_folds, diffs)] for o, (_, diffs) in options.items()}
    choice = cv.one_se_choice(folds, {o: c for o, (c, _) in options.items()})
    assert choice["best"] == "best" and choice["chosen"] == "noisy-better"
    rows = choice["candidates"]
    assert list(rows) == ["tight", "far", "noisy-better", "noisy", "dear", "best"]
    assert [o for o, r in rows.items() if r["within"]] == ["noisy-better", "noisy", "dear", "best"]
    assert rows["tight"]["mean_diff"] == pytest.approx(rows["noisy"]["mean_diff"]) and rows["tight"]["se"] < 1e-9
    monkeypatch.setattr(cv, "NEAR", 1)  # only the NEAR cheaper refused options closest to the bar are listed
    assert list(cv.one_se_choice(folds, {o: c for o, (c, _) in options.items()})["candidates"]) == [
        "tight", "noisy-better", "noisy", "dear", "best"]
    # one fold: no spread to judge by, so only the best (and options as good) qualify
    assert cv.one_se_choice({"a": [0.9], "b": [0.91], "c": [0.91]}, {"a": 1, "b": 3, "c": 2})["chosen"] == "c"
    assert cv.passes("plain") == 1 and cv.passes("tta:light:8:0.5") == 9


def _check_choice(cv, choice: dict, option_folds: dict) -> None:
    """A `choice` block agrees with its own per-fold numbers, and those with the options' scores."""
    rows = choice["candidates"]
    assert choice["best"] in rows and choice["chosen"] in rows and rows[choice["chosen"]]["within"]
    for o, r in rows.items():  # models x forward passes per image
        members, mode = o[:-1].split(" [")
        assert r["cost"] == (members.count(" + ") + 1) * (1 if mode == "last epoch" else cv.passes(mode))
    best = rows[choice["best"]]
    assert best["mean"] == max(statistics.mean(f) for f in option_folds.values())
    for o, r in rows.items():
        assert r["folds"] == option_folds[o]
        diffs = [b - a for b, a in zip(best["folds"], r["folds"])]
        assert r["mean"] == pytest.approx(statistics.mean(r["folds"]))
        assert r["mean_diff"] == pytest.approx(statistics.mean(diffs))
        assert r["se"] == pytest.approx(statistics.stdev(diffs) / len(diffs) ** 0.5)
        assert r["within"] == (r["mean_diff"] <= r["se"] + cv.TIE)
    within = [o for o, r in rows.items() if r["within"]]
    assert choice["chosen"] == min(within, key=lambda o: (rows[o]["cost"], -rows[o]["mean"]))


@pytest.mark.slow
def test_levers_teachers_last_epoch_and_ensembles(kmnist, tmp_path, monkeypatch, capsys):
    """`levers`: fold k's teacher is the teacher lever's fold-k run; last-epoch accuracy sits beside model.pth's;
    the default is the one-standard-error rule's choice among the honest options; `ensemble` rescores the levers'
    ensembles from the same caches without predicting again."""
    cv = _load("cv")
    monkeypatch.setattr(cv, "TTA_NS", (cv.TTA_N,))  # one TTA length: per-image draws are the suite's costliest step
    monkeypatch.setattr(cv, "LEVERS", {
        "base": ("default-lenet5", {}),
        "base-pseudo": ("default-lenet5", {"pseudo": "base", "pseudo_threshold": 0.5, "keep": "last"}),
        "base-erase": ("default-lenet5", {"erase": 0.25, "keep": "last"}),
    })
    out = tmp_path / "lv"
    summary = cv.main(["levers", "--data", str(kmnist.root), "--out", str(out), "--smoke", "--jobs", "1"])
    rows = summary["levers"]
    assert list(rows) == ["base", "base-pseudo", "base-erase"] and all(r["folds"] == 2 for r in rows.values())
    assert json.loads((out / "levers.json").read_text())["ensemble_mode"] == summary["ensemble_mode"]
    md = (out / "levers.md").read_text()
    assert "| base-pseudo | 1 | last |" in md and "last epoch" in md
    for k in (0, 1):
        student = RunRecord.read(rows["base-pseudo"]["dirs"][k])
        teacher = Path(rows["base"]["dirs"][k])
        assert student.config.split.fold == k == RunRecord.read(teacher).config.split.fold
        assert student.extra["pseudo"]["teachers"] == [str(teacher.resolve())]
        assert student.extra["pseudo"]["images"] == rows["base-pseudo"]["pseudo_images"][k]
    for r in rows.values():
        lasts = [RunRecord.read(d).history[-1]["accuracy"] for d in r["dirs"]]
        assert r["fold_last_epoch"] == lasts and r["last_epoch"][0] == pytest.approx(statistics.mean(lasts))
        assert all(r["modes"][m][0] == pytest.approx(statistics.mean(r["fold_modes"][m])) for m in cv.modes())
    # model.pth holds the last epoch: its plain accuracy is that epoch's validation accuracy
    assert rows["base-pseudo"]["plain"][0] == pytest.approx(rows["base-pseudo"]["last_epoch"][0], abs=1e-6)
    # the ensembles' TTA mode is the best on average over the levers, and ensembles are scored at it and plain
    mode = summary["ensemble_mode"]
    assert mode == max(cv.modes()[1:], key=lambda m: statistics.mean(r["modes"][m][0] for r in rows.values()))
    combos = ("base + base-pseudo", "base + base-erase", "base-pseudo + base-erase", "base + base-pseudo + base-erase")
    assert set(summary["ensembles"]) == {f"{c} [{m}]" for c in combos for m in ("plain", mode)}
    # the one-standard-error rule's options: every lever's last epoch; the levers that keep their last epoch, and
    # their ensemble, at every mode (base's model.pth is its best epoch: its scores are not honest)
    honest = summary["honest_ensembles"]
    assert set(honest) == {f"base-pseudo + base-erase [{m}]" for m in cv.modes()}
    options = {f"{n} [last epoch]": r["fold_last_epoch"] for n, r in rows.items()}
    options |= {f"{n} [{m}]": rows[n]["fold_modes"][m] for n in ("base-pseudo", "base-erase") for m in cv.modes()[1:]}
    options |= {k: e["folds"] for k, e in honest.items()}
    saved = json.loads((out / "levers.json").read_text())
    choice = saved["choice"]
    assert choice == json.loads(json.dumps(summary["choice"]))
    _check_choice(cv, choice, options)
    assert "## Choice by the one-standard-error rule" in md and f"`{choice['chosen']}`" in md
    assert capsys.readouterr().out.splitlines()[-1].startswith(f"chosen (one-standard-error rule) {choice['chosen']} ")
    caches = _mtimes(out, "*.npz")
    assert len(caches) == 6 and {p.name for p in caches} == {cv.PREDS_FILE}
    scored = cv.main(["ensemble", str(out / "base"), str(out / "base-pseudo"), str(out / "base-erase")])
    assert scored["folds"] == [0, 1] and _mtimes(out, "*.npz") == caches
    for key, e in summary["ensembles"].items():
        assert scored["ensembles"][key]["acc"] == pytest.approx(e["acc"])
    assert scored["ensembles"][f"base [{mode}]"]["acc"] == pytest.approx(rows["base"]["modes"][mode])
    # `ensemble` chooses among every combination at every mode by the same rule
    _check_choice(cv, scored["choice"], {k: e["folds"] for k, e in scored["ensembles"].items()})


@pytest.mark.slow
def test_cv_is_one_script_importing_the_installed_package(tmp_path):
    """No sys.path edits: run from elsewhere, it finds kmnist_fa as installed."""
    assert "sys.path" not in (TOOLS / "cv.py").read_text()
    res = subprocess.run([sys.executable, str(TOOLS / "cv.py"), "--help"], cwd=tmp_path, capture_output=True,
                         text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert "{levers,select,ensemble}" in res.stdout
