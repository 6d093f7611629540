"""Export: ONNX, TorchScript and safetensors agree with `predict --no-tta`; the ONNX runtime needs no torch."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

pytest.importorskip("onnxruntime", reason="the export extra is not installed")

from kmnist_fa.cli import app  # noqa: E402
from kmnist_fa.infer.export import export  # noqa: E402
from kmnist_fa.infer.predict import load_run, predict_probs  # noqa: E402
from kmnist_fa.infer.runtime import OnnxClassifier  # noqa: E402
from kmnist_fa.runs.paths import reference_runs  # noqa: E402
from kmnist_fa.runs.record import RunRecord  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
runner = CliRunner()


def _one_run_per_arch() -> list[Path]:
    """Export is per architecture (the graph is the network plus normalisation): one shipped run of each."""
    by_arch = {}
    for p in reference_runs():
        by_arch.setdefault(RunRecord.read(p).arch, p)
    return list(by_arch.values())


@pytest.mark.parametrize("path", _one_run_per_arch(), ids=lambda p: p.name)
def test_onnx_and_torchscript_match_predict_on_real_images(path, kmnist, tmp_path):
    x = kmnist.train_x[::4]  # 300 labelled images, every class
    run = load_run(path, cpu=True)
    ref = predict_probs(run, x).numpy()
    onnx_probs = OnnxClassifier(export([run], tmp_path / "m.onnx", "onnx")).predict_probs(x, tta=False)  # as ref
    ts = torch.jit.load(str(export([run], tmp_path / "m.pt", "torchscript")))
    with torch.inference_mode():
        ts_probs = torch.cat([ts(torch.from_numpy(b))[1] for b in np.array_split(x, 5)]).numpy()
    for got in (onnx_probs, ts_probs):
        assert (got.argmax(1) == ref.argmax(1)).all() and np.abs(got - ref).max() <= 1e-4


def test_safetensors_round_trip_and_metadata(tmp_path):
    from safetensors import safe_open

    run = load_run(reference_runs()[0], cpu=True)
    f = export([run], tmp_path / "m.safetensors", "safetensors")
    with safe_open(str(f), "pt") as st:
        meta = st.metadata()
        got = {k: st.get_tensor(k) for k in st.keys()}
    sd = run.learn.model.state_dict()
    assert all(torch.equal(got[f"models.0.{k}"], v) for k, v in sd.items())
    assert json.loads(meta["kmnist_fa.classes"]) == run.classes
    assert json.loads(meta["kmnist_fa.members"])[0]["name"] == run.name


def test_ensemble_graph_and_cli(kmnist, tmp_path):
    from kmnist_fa.core.formats import write_idx

    runs = [str(p) for p in reference_runs() if p.name in ("lenet5", "alexnet5")]
    r = runner.invoke(app, ["export", *runs, "--out", str(tmp_path / "ens.onnx")])
    assert r.exit_code == 0, r.output
    clf = OnnxClassifier(tmp_path / "ens.onnx")
    assert [m["name"] for m in clf.members] == [Path(p).name for p in runs]
    write_idx(tmp_path / "x-idx3-ubyte", kmnist.test_x[:1000])
    args = ["predict", str(tmp_path / "x-idx3-ubyte")]
    r1 = runner.invoke(app, [*args, "-m", str(tmp_path / "ens.onnx"), "--out", str(tmp_path / "a.csv")])
    r2 = runner.invoke(app, [*args, "-m", runs[0], "-m", runs[1], "--no-tta", "--out", str(tmp_path / "b.csv")])
    assert r1.exit_code == r2.exit_code == 0, r1.output + r2.output
    a, b = (tmp_path / "a.csv").read_text().splitlines(), (tmp_path / "b.csv").read_text().splitlines()
    assert len(a) == 301 and a == b  # the graph's mean of probabilities is the ensemble's
    (tmp_path / "bad.onnx").write_bytes(b"not onnx")
    r = runner.invoke(app, [*args, "-m", str(tmp_path / "bad.onnx")])
    assert r.exit_code == 2 and "not a loadable ONNX model" in r.output
    r = runner.invoke(app, [*args, "-m", str(tmp_path / "ens.onnx"), "-m", runs[0]])
    assert r.exit_code == 2 and "predicts alone" in r.output


def test_runtime_tta_is_seeded_and_close_to_the_clean_pass(kmnist, tmp_path):
    clf = OnnxClassifier(export([load_run(reference_runs()[-1], cpu=True)], tmp_path / "m.onnx", "onnx"))
    x, y = kmnist.train_x[:600], kmnist.train_y[:600]
    clean = clf.predict_probs(x)
    a, b, c = (clf.predict_probs(x, tta=True, n=3, seed=s) for s in (1, 1, 2))
    assert np.array_equal(a, b) and not np.array_equal(a, c) and np.allclose(a.sum(1), 1, atol=1e-5)
    assert (a.argmax(1) == clean.argmax(1)).mean() > 0.9 and (a.argmax(1) == y).mean() > 0.8


def test_runtime_classifies_without_torch(kmnist, kmnist_dir, tmp_path):
    run = load_run(reference_runs()[-1], cpu=True)
    model = export([run], tmp_path / "m.onnx", "onnx")
    Image.fromarray(255 - kmnist.train_x[5]).resize((84, 84)).save(tmp_path / "char.png")  # dark on light, larger
    code = (
        "import sys, json\n"
        "for m in ('torch', 'fastai', 'typer', 'rich', 'matplotlib'): sys.modules[m] = None\n"
        "from kmnist_fa.runtime import classify\n"
        f"rows = classify({str(model)!r}, [{str(tmp_path / 'char.png')!r}])\n"
        f"rows += classify({str(model)!r}, [{str(kmnist_dir / 't10k-images-idx3-ubyte.gz')!r}])[:50]\n"
        "assert 'torch' not in [m for m in sys.modules if sys.modules[m] is not None]\n"
        "print(json.dumps(rows))\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=300,
                       env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert r.returncode == 0, r.stderr[-2000:]
    rows = json.loads(r.stdout)
    from kmnist_fa.data.images import read_image

    want = predict_probs(run, read_image(tmp_path / "char.png")[None]).argmax(1).item()
    test = predict_probs(run, kmnist.test_x[:50]).argmax(1).tolist()
    assert rows[0]["id"] == "char.png" and rows[0]["class"] == want and rows[0]["char"] == run.chars[want]
    assert [row["class"] for row in rows[1:]] == test and rows[1]["id"] == "0"


def test_hub_folder_round_trip_card_and_offline_push(kmnist, tmp_path, monkeypatch):
    from kmnist_fa.core.formats import write_idx

    ref = reference_runs()[-1]  # lenet5
    r = runner.invoke(app, ["export", str(ref), "--format", "hub", "--out", str(tmp_path / "hub")])
    assert r.exit_code == 0, r.output
    hub = tmp_path / "hub"
    assert sorted(p.name for p in hub.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    cfg = json.loads((hub / "config.json").read_text())
    assert (cfg["arch"], cfg["n_classes"]) == ("lenet5", 10) and RunRecord.read(hub) == RunRecord.read(ref)
    card = (hub / "README.md").read_text()
    assert "license: cc-by-sa-4.0" in card and "doi:10.20676/00000341" in card and "お o" in card
    write_idx(tmp_path / "x-idx3-ubyte", kmnist.test_x[:500])
    for m, name in ((hub, "a"), (ref, "b")):
        r = runner.invoke(app, ["predict", str(tmp_path / "x-idx3-ubyte"), "-m", str(m), "--tta", "--tta-n", "2",
                                "--probs", str(tmp_path / f"{name}.csv")])
        assert r.exit_code == 0, r.output
    assert (tmp_path / "a.csv").read_bytes() == (tmp_path / "b.csv").read_bytes()  # same weights, same seeded TTA
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    r = runner.invoke(app, ["export", str(ref), "--format", "hub", "--out", str(tmp_path / "hub2"), "--push", "me/x"])
    assert r.exit_code == 2 and r.stderr.startswith("error: --push me/x: upload failed") and r.stderr.count("\n") == 1
    r = runner.invoke(app, ["export", str(ref), "--format", "hub", "--out", str(hub)])
    assert r.exit_code == 2 and "not an empty folder" in r.output


def test_exported_tta_settings_reach_the_runtime(kmnist, tmp_path):
    """An ONNX file carries its run's TTA settings, and the torch-free runtime blends with their clean-pass weight."""
    from kmnist_fa.config.options import TtaSettings

    path, x = reference_runs()[0], kmnist.train_x[:40]
    clfs = {}
    for beta in (0.0, 0.75):
        run = load_run(path, cpu=True, tta=TtaSettings(on=True, n=2, beta=beta))
        clfs[beta] = OnnxClassifier(export([run], tmp_path / f"m{beta}.onnx", "onnx"))
        assert clfs[beta].tta == run.tta
    clean, aug = clfs[0.75].predict_probs(x, tta=False), clfs[0.0].predict_probs(x, seed=1)
    np.testing.assert_allclose(clfs[0.75].predict_probs(x, seed=1), 0.25 * aug + 0.75 * clean, atol=1e-6)
