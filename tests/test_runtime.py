"""The torch-free runtime: the file's TTA settings by default, per-image TTA, `python -m kmnist_fa.runtime` and
the `kmnist-fa` launcher giving what `predict` gives, and all of it in a venv holding only the runtime's
dependencies (no torch, fastai, typer or rich)."""
import configparser
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

pytest.importorskip("onnxruntime", reason="the export extra is not installed")

from kmnist_fa import launcher  # noqa: E402
from kmnist_fa.cli import app  # noqa: E402
from kmnist_fa.config.options import TtaSettings  # noqa: E402
from kmnist_fa.infer.export import export  # noqa: E402
from kmnist_fa.infer.predict import load_run  # noqa: E402
from kmnist_fa.runtime import OnnxClassifier, classify, main  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TTA = TtaSettings(on=True, n=2, beta=0.75)
runner = CliRunner()


@pytest.fixture(scope="module")
def onnx(lenet_run, kmnist, tmp_path_factory):
    """The shared LeNet5 run exported twice: with TTA off (as a plain run) and with its own TTA settings on; and
    three image files (two characters, one drawn dark on light)."""
    d = tmp_path_factory.mktemp("onnx")
    for i, name in enumerate(("a", "b")):
        Image.fromarray(kmnist.test_x[i]).save(d / f"{name}.png")
    Image.fromarray(255 - kmnist.test_x[2]).resize((84, 84)).save(d / "c.png")
    return {"plain": export([load_run(lenet_run.path, cpu=True)], d / "plain.onnx", "onnx"),
            "tta": export([load_run(lenet_run.path, cpu=True, tta=TTA)], d / "tta.onnx", "onnx"), "dir": d}


def test_defaults_are_the_files_tta_settings(onnx, kmnist):
    plain, tta = OnnxClassifier(onnx["plain"]), OnnxClassifier(onnx["tta"])
    x = kmnist.test_x[:30]
    assert tta.tta == TTA and not plain.tta.on
    assert np.array_equal(plain.predict_probs(x), plain.predict_probs(x, tta=False))
    on = tta.predict_probs(x)
    assert np.array_equal(on, tta.predict_probs(x, tta=True, n=2)) and not np.array_equal(on, tta.predict_probs(x, tta=False))
    assert not np.array_equal(on, tta.predict_probs(x, n=3))
    assert np.array_equal(plain.predict_probs(x, tta=True, n=2), plain.predict_probs(x, tta=True, n=2))
    with pytest.raises(Exception, match="TTA passes must be"):
        tta.predict_probs(x, n=0)


def test_tta_of_an_image_does_not_depend_on_the_others(onnx, kmnist):
    """Each image's augmentations are drawn from the seed and its own pixels: alone, among others or in any order,
    the same probabilities; another seed, other ones."""
    clf, x = OnnxClassifier(onnx["tta"]), kmnist.test_x[:12]
    together = clf.predict_probs(x, seed=7)
    alone = np.concatenate([clf.predict_probs(x[i:i + 1], seed=7) for i in range(len(x))])
    order = np.arange(len(x))[::-1]
    assert np.array_equal(together, alone) and np.array_equal(clf.predict_probs(x[order], seed=7), together[order])
    assert np.array_equal(clf.predict_probs(x, bs=5, seed=7), together)
    assert not np.array_equal(clf.predict_probs(x, seed=8), together)
    d = onnx["dir"]
    rows = classify(onnx["tta"], [d], seed=7)
    assert [r["id"] for r in rows] == ["a.png", "b.png", "c.png"]
    assert [classify(onnx["tta"], [d / r["id"]], seed=7)[0] for r in rows] == rows


def test_rows_and_json_match_predict(onnx, lenet_run):
    """`classify`, `python -m kmnist_fa.runtime --json` and `kmnist-fa predict --json` give the same rows, and
    say what they used: the run, the file's TTA settings, the seed."""
    png = str(onnx["dir"] / "c.png")
    rows = classify(onnx["tta"], [png])
    assert list(rows[0]) == ["id", "class", "name", "char", "prob"] and rows[0]["char"] == lenet_run.record.chars[rows[0]["class"]]
    r = runner.invoke(app, ["predict", png, "-m", str(onnx["tta"]), "--json"])
    assert r.exit_code == 0, r.output
    cli = json.loads(r.stdout)
    assert cli["rows"] == rows
    assert cli["used"] == {"runs": [lenet_run.record.name], "model_file": "tta.onnx", "tta": True, "tta_n": 2,
                           "tta_beta": 0.75, "method": "mean", "seed": 42}
    r = runner.invoke(app, ["predict", png, "-m", str(onnx["tta"])])
    title = "predictions (1 images; 1 run (lenet-fixture) in tta.onnx, TTA 2 passes, clean-pass weight 0.75, seed 42)"
    assert title in " ".join(r.output.split())  # the title wraps at the table's width
    r = runner.invoke(app, ["predict", png, "-m", str(onnx["tta"]), "--no-tta", "--seed", "3", "--json"])
    assert json.loads(r.stdout)["used"] == {"runs": [lenet_run.record.name], "model_file": "tta.onnx", "tta": False,
                                            "tta_n": None, "tta_beta": None, "method": "mean", "seed": 3}


def test_runtime_cli_writes_predicts_csv(onnx, lenet_run, kmnist_dir, tmp_path, capsys):
    t10k = str(kmnist_dir / "t10k-images-idx3-ubyte.gz")
    r = runner.invoke(app, ["predict", t10k, "-m", str(lenet_run.path), "--no-tta", "--out", str(tmp_path / "a.csv")])
    assert r.exit_code == 0, r.output
    assert main([t10k, "--model", str(onnx["plain"]), "--out", str(tmp_path / "b.csv")]) == 0
    assert main([t10k, "-m", str(onnx["tta"]), "--no-tta", "--out", str(tmp_path / "c.csv")]) == 0
    want = (tmp_path / "a.csv").read_bytes()
    assert want.count(b"\n") == 301 and (tmp_path / "b.csv").read_bytes() == (tmp_path / "c.csv").read_bytes() == want
    capsys.readouterr()
    (tmp_path / "bad.png").write_bytes(b"junk")
    assert main([str(onnx["dir"] / "a.png"), str(tmp_path / "bad.png"), "-m", str(onnx["plain"])]) == 1
    got = capsys.readouterr()
    assert "bad.png: not a readable image" in got.err and got.out.startswith("predictions (1 images; 1 run")
    for args, msg in (([t10k], "without --model FILE.onnx"), ([t10k, "-m", str(lenet_run.path)], "runs need the full"),
                      ([t10k, "-m", str(tmp_path / "a.csv.onnx")], "file not found"),
                      ([t10k, "-m", str(onnx["plain"]), "-m", str(onnx["tta"])], "predicts alone"),
                      ([t10k, "-m", str(onnx["tta"]), "--tta-n", "0"], "TTA passes must be"),
                      ([t10k, "-m", str(onnx["tta"]), "--seed", "-1"], "--seed must be")):
        assert main(args) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and msg in err and err.count("\n") == 1, err


def test_launcher_serves_predict_without_the_full_install(onnx, monkeypatch, capsys):
    png = str(onnx["dir"] / "a.png")
    monkeypatch.setattr(launcher, "FULL", ("json", "no_such_module_for_kmnist_fa"))
    monkeypatch.setattr(sys, "argv", ["kmnist-fa", "predict", png, "--model", str(onnx["plain"]), "--json"])
    with pytest.raises(SystemExit) as e:
        launcher.main()
    assert e.value.code == 0 and json.loads(capsys.readouterr().out)["rows"] == classify(onnx["plain"], [png])
    monkeypatch.setattr(sys, "argv", ["kmnist-fa", "train", "--epochs", "1"])
    with pytest.raises(SystemExit) as e:
        launcher.main()
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count("\n") == 1
    assert err.startswith("error: kmnist-fa train: needs the full install (pip install kmnist-fa; missing here: "
                          "no_such_module_for_kmnist_fa)")


def _runtime_requirements() -> list[str]:
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    return cfg["options.extras_require"]["runtime"].split()


@pytest.mark.slow
@pytest.mark.e2e
def test_torch_free_venv(onnx, lenet_run, kmnist_dir, tmp_path):
    """docs/export-deploy.md's recipe: a venv with the runtime extra's packages and `pip install --no-deps` of
    kmnist-fa. `kmnist-fa predict --model X.onnx` and `python -m kmnist_fa.runtime` read a PNG and the t10k file;
    without TTA their CSV is `predict --no-tta`'s of the run byte for byte; by default they use the file's TTA."""
    t0 = time.perf_counter()
    venv = tmp_path / "venv"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    sh = lambda *cmd: subprocess.run([str(c) for c in cmd], capture_output=True, text=True, env=env, cwd=tmp_path,
                                     timeout=240)
    r = sh(sys.executable, "-m", "venv", venv)
    assert r.returncode == 0, r.stderr
    py, cli = venv / "bin" / "python", venv / "bin" / "kmnist-fa"
    for args in (_runtime_requirements(), ["--no-deps", "-e", ROOT]):
        r = sh(py, "-m", "pip", "install", "-q", "--disable-pip-version-check", *args)
        assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    r = sh(py, "-c", "import importlib.util as u; print([m for m in ('torch', 'fastai', 'fastcore', 'typer', 'rich', 'matplotlib') "
                     "if u.find_spec(m)])")
    assert r.stdout.strip() == "[]", r.stdout + r.stderr
    installed = time.perf_counter() - t0

    t10k, png = kmnist_dir / "t10k-images-idx3-ubyte.gz", onnx["dir"] / "c.png"
    r = runner.invoke(app, ["predict", str(t10k), "-m", str(lenet_run.path), "--no-tta", "--out", str(tmp_path / "want.csv")])
    assert r.exit_code == 0, r.output
    for name, cmd in (("script", [cli, "predict"]), ("module", [py, "-m", "kmnist_fa.runtime"])):
        r = sh(*cmd, t10k, "--model", onnx["tta"], "--no-tta", "--out", tmp_path / f"{name}.csv")
        assert r.returncode == 0, r.stderr
        assert (tmp_path / f"{name}.csv").read_bytes() == (tmp_path / "want.csv").read_bytes()
        r = sh(*cmd, png, t10k, "--model", onnx["tta"], "--json")
        assert r.returncode == 2 and "mix of MNIST-format files and image files" in r.stderr
        r = sh(*cmd, png, "--model", onnx["tta"], "--json")
        assert r.returncode == 0, r.stderr
        got = json.loads(r.stdout)
        assert got["used"]["tta"] is True and (got["used"]["tta_n"], got["used"]["tta_beta"]) == (2, 0.75)
        want = classify(onnx["tta"], [png])  # this (full) install's runtime, same seed and TTA settings
        assert [(g["id"], g["class"], g["char"]) for g in got["rows"]] == [(w["id"], w["class"], w["char"]) for w in want]
        assert got["rows"][0]["prob"] == pytest.approx(want[0]["prob"], abs=1e-5)
    r = sh(cli, "predict", png, "--model", onnx["plain"])
    assert r.returncode == 0 and r.stdout.startswith("predictions (1 images; 1 run (lenet-fixture) in plain.onnx, no TTA")
    r = sh(cli, "train")
    assert r.returncode == 2 and r.stderr.startswith("error: kmnist-fa train: needs the full install") and not r.stdout
    print(f"venv installed in {installed:.1f} s, whole test {time.perf_counter() - t0:.1f} s")
