"""Release tooling in tools/: the default selection runs on the toolkit's own search engine."""
import importlib.util
import json
from pathlib import Path

from kmnist_fa.runs import RunRecord

TOOLS = Path(__file__).resolve().parents[1] / "tools"


def _load(name):
    spec = importlib.util.spec_from_file_location(name, TOOLS / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_select_defaults_smoke_chooses_by_cv_and_resumes(kmnist, tmp_path):
    sd = _load("select_defaults")
    out = tmp_path / "cv"
    summary = sd.main(["--data", str(kmnist.root), "--out", str(out), "--smoke", "--jobs", "1"])
    table = summary["candidates"]
    assert set(table) == {"lenet5-light-40", "lenet5-heavy-60"} and all(r["folds"] == 2 for r in table.values())
    assert summary["best"]["lenet5"] == max(table, key=lambda k: table[k]["tta_mean"])
    # fold members are sweep runs of one study per architecture, each with cached validation predictions
    members = sorted(p.name for p in (out / "lenet5").iterdir() if (p / "run.json").exists())
    assert len(members) == 4 and all((out / "lenet5" / m / "valid_probs.npz").exists() for m in members)
    full = RunRecord.read(summary["full_runs"]["lenet5"])
    assert full.complete and full.config.split.full and full.config.optim.epochs == 1
    assert json.loads((out / "results.json").read_text())["best"] == summary["best"]
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("run.json")}
    again = sd.main(["--data", str(kmnist.root), "--out", str(out), "--smoke", "--jobs", "1"])
    assert again["best"] == summary["best"] and {p: p.stat().st_mtime_ns for p in out.rglob("run.json")} == stamps


def test_cv_levers_cache_blends_tta_exactly_like_predict(lenet_run, tmp_path):
    """The levers tool scores TTA settings from cached parts; each must equal the toolkit's own prediction."""
    import shutil

    import numpy as np

    from kmnist_fa.inference import load_run, predict_probs, run_data, validation_set

    lv = _load("cv_levers")
    run_dir = tmp_path / "run"
    shutil.copytree(lenet_run.path, run_dir)
    z = np.load(lv.fold_probs(run_dir))
    run = load_run(run_dir)
    x, y, _ = validation_set(run, run_data(run))
    assert (z["labels"] == y).all()
    np.testing.assert_allclose(lv.probs_for(z, "plain"), predict_probs(run, x).numpy(), atol=1e-6)
    for n in lv.TTA_NS:
        np.testing.assert_allclose(lv.probs_for(z, f"tta:train:{n}:0.25"),
                                   predict_probs(run, x, tta=True, n=n).numpy(), atol=1e-6)
    light = load_run(run_dir, tta_aug="light", tta_beta=0.5)
    np.testing.assert_allclose(lv.probs_for(z, "tta:light:4:0.5"), predict_probs(light, x, tta=True, n=4).numpy(),
                               atol=1e-6)
