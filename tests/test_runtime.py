"""The torch-free runtime: the file's TTA settings by default, per-image TTA, `python -m kmnist_fa.runtime` and
the `kmnist-fa` launcher giving what `predict` gives, and all of it in a venv holding only the runtime's
dependencies (no torch, fastai, typer or rich)."""
import configparser
import json
import os
import re
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
from kmnist_fa.core.errors import DataError  # noqa: E402
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


# --------------------------------------------------------------------------- hostile files

def _meta(model, **values) -> None:
    for p in model.metadata_props:
        if p.key[len("kmnist_fa."):] in values:
            p.value = values[p.key[len("kmnist_fa."):]]


def _rename(model, old: str, new: str) -> None:
    g = model.graph
    for v in [*g.input, *g.output]:
        if v.name == old:
            v.name = new
    for n in g.node:
        for names in (n.input, n.output):
            renamed = [new if x == old else x for x in names]
            del names[:]
            names.extend(renamed)


def _constant_of_shape(model, ox) -> None:
    """4 TB of zeros, if onnxruntime were asked to make them."""
    g = model.graph
    g.initializer.append(ox.numpy_helper.from_array(np.array([1 << 40], np.int64), "bomb_shape"))
    g.node.append(ox.helper.make_node("ConstantOfShape", ["bomb_shape"], ["bomb"],
                                      value=ox.helper.make_tensor("v", ox.TensorProto.FLOAT, [1], [0.0])))
    g.output.append(ox.helper.make_tensor_value_info("bomb", ox.TensorProto.FLOAT, [1 << 40]))


def _external_weights(model, ox) -> None:
    """A weight whose bytes onnxruntime would read from another file (any the entry names)."""
    t = model.graph.initializer[0]
    t.ClearField("raw_data")
    t.data_location = ox.TensorProto.EXTERNAL
    t.external_data.add(key="location", value="/etc/passwd")


def _external_constant(model, ox) -> None:
    """The same, hidden in a Constant node's value attribute."""
    value = ox.helper.make_tensor("c", ox.TensorProto.FLOAT, [1], [0.0])
    value.ClearField("float_data")
    value.data_location = ox.TensorProto.EXTERNAL
    value.external_data.add(key="location", value="secret.bin")
    model.graph.node.insert(0, ox.helper.make_node("Constant", [], ["c_out"], value=value))


HOSTILE = {  # edit of the plain export -> what the one line says
    "external weights": (_external_weights, "its weights point at external files"),
    "external constant": (_external_constant, "its weights point at external files"),
    "output name": (lambda m, ox: _rename(m, "probs", "p"), "its graph must output 'probs'"),
    "input name": (lambda m, ox: _rename(m, "images", "x"), "its graph must take one input, 'images'"),
    "input shape": (lambda m, ox: m.graph.input[0].type.tensor_type.shape.dim.add().CopyFrom(
        ox.TensorShapeProto.Dimension(dim_value=1)), "its graph must take one input, 'images'"),
    "fewer classes": (lambda m, ox: _meta(m, classes=json.dumps(list("abcdefghi")), chars="null"),
                      "batch x 9 (its metadata's"),
    "chars": (lambda m, ox: _meta(m, chars='["a"]'), "its characters are not a string for each of its 10"),
    "nested JSON": (lambda m, ox: _meta(m, classes="[" * 200_000 + "]" * 200_000),
                    "metadata kmnist_fa.classes is not JSON"),
    "huge int": (lambda m, ox: _meta(m, classes="9" * 5000), "metadata kmnist_fa.classes is not JSON"),
    "huge metadata": (lambda m, ox: _meta(m, members=json.dumps("x" * (2 << 20))),
                      "metadata kmnist_fa.members is over 1024 KiB"),
    "members": (lambda m, ox: _meta(m, members='[{"nom": 1}]'), "does not name the runs"),
    "TTA passes": (lambda m, ox: _meta(m, tta='{"tta": true, "tta_n": 1000000000}'), "1,000,000,000 passes"),
    "ConstantOfShape": (_constant_of_shape, "its graph uses ConstantOfShape, which the runtime does not run"),
    "custom domain": (lambda m, ox: m.graph.node[0].__setattr__("domain", "com.example"), "uses com.example:"),
    "local function": (lambda m, ox: m.functions.add().CopyFrom(ox.helper.make_function(
        "x", "f", [], [], [], [ox.helper.make_opsetid("", 18)])), "defines functions of its own"),
}


def _hostile(src: Path, out: Path, edit) -> Path:
    ox = pytest.importorskip("onnx", reason="the export extra is not installed")
    model = ox.load(str(src))
    edit(model, ox)
    ox.save(model, str(out))
    return out


@pytest.mark.parametrize("case", list(HOSTILE))
def test_hostile_files_are_one_line_before_anything_runs(case, onnx, tmp_path, capsys):
    """Each is refused while loading, from its graph's declared inputs, outputs and ops and its metadata: a
    DataError from the API, one line and exit 2 from `predict` and `python -m kmnist_fa.runtime`."""
    edit, msg = HOSTILE[case]
    bad = str(_hostile(onnx["plain"], tmp_path / "bad.onnx", edit))
    with pytest.raises(DataError, match=re.escape(msg)):
        OnnxClassifier(bad)
    png = str(onnx["dir"] / "a.png")
    r = runner.invoke(app, ["predict", png, "--model", bad])
    assert r.exit_code == 2 and msg in r.output and r.output.strip().count("\n") == 0, r.output
    capsys.readouterr()
    assert main([png, "--model", bad]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {bad}: ") and msg in err and err.count("\n") == 1, err


def test_oversized_and_non_protobuf_files(tmp_path, monkeypatch):
    from kmnist_fa.infer import runtime

    (tmp_path / "junk.onnx").write_bytes(b"\x0f" * (2 << 20))  # wire type 7 does not exist
    with pytest.raises(DataError, match=r"junk.onnx: not a loadable ONNX model \(not protobuf: wire type 7\)"):
        OnnxClassifier(tmp_path / "junk.onnx")
    (tmp_path / "tiny.onnx").write_bytes(b"\x08\x01" * (4 << 20))  # ir_version, 4 million times: valid protobuf
    with pytest.raises(DataError, match=r"tiny.onnx: not a loadable ONNX model \(over 1,048,576 protobuf fields\)"):
        OnnxClassifier(tmp_path / "tiny.onnx")
    monkeypatch.setattr(runtime, "MAX_FILE_BYTES", 1 << 20)
    with pytest.raises(DataError, match="junk.onnx: larger than 1 MiB"):
        OnnxClassifier(tmp_path / "junk.onnx")


def _hand_made(path: Path, nodes: list, inits: dict[str, np.ndarray], n_classes: int = 10) -> Path:
    """A graph with the runtime's input, output and metadata around `nodes`, as no export writes it."""
    ox = pytest.importorskip("onnx", reason="the export extra is not installed")
    h, f = ox.helper, ox.TensorProto.FLOAT
    graph = h.make_graph(nodes, "hand-made", [h.make_tensor_value_info("images", f, ["batch", 28, 28])],
                         [h.make_tensor_value_info("probs", f, ["batch", n_classes])],
                         initializer=[ox.numpy_helper.from_array(v, k) for k, v in inits.items()])
    model = h.make_model(graph, opset_imports=[h.make_opsetid("", 18)], ir_version=10)
    for k, v in {"classes": json.dumps([str(i) for i in range(n_classes)]), "chars": "null",
                 "members": '[{"name": "hand-made"}]'}.items():
        model.metadata_props.add(key=f"kmnist_fa.{k}", value=v)
    ox.save(model, str(path))
    return path


def _pad_bomb(path: Path, pad: int, constant: bool = False) -> Path:
    """Ops that export writes, with a 16-channel Conv padded by `pad` on each side: 16 x (28 + 2 pad)^2 floats per
    image (of a constant 1 x 1 image instead when `constant`, which constant folding would compute on load)."""
    from onnx.helper import make_node

    side = (1 if constant else 28) + 2 * pad
    nodes = [make_node("Reshape", ["images", "s4"], ["x4"]),
             make_node("Conv", ["c" if constant else "x4", "w1"], ["big"], pads=[pad] * 4),
             make_node("MaxPool", ["big"], ["mp"], kernel_shape=[side, side]),
             make_node("Reshape", ["mp", "s16"], ["r"]), make_node("MatMul", ["r", "w2"], ["k"]),
             make_node("Reshape", ["x4", "s784"], ["flat"]), make_node("MatMul", ["flat", "w3"], ["z"]),
             make_node("Add", ["z", "k"], ["logits"]), make_node("Softmax", ["logits"], ["probs"], axis=1)]
    return _hand_made(path, nodes, {"s4": np.array([-1, 1, 28, 28]), "s16": np.array([-1, 16]),
                                    "s784": np.array([-1, 784]), "c": np.ones((1, 1, 1, 1), np.float32),
                                    "w1": np.ones((16, 1, 1, 1), np.float32), "w2": np.ones((16, 10), np.float32),
                                    "w3": np.zeros((784, 10), np.float32)})


def test_a_graph_that_breaks_its_declared_output_shape_is_one_line(tmp_path, kmnist):
    from onnx.helper import make_node

    bad = _hand_made(tmp_path / "liar.onnx", [make_node("Reshape", ["images", "s"], ["probs"])],
                     {"s": np.array([-1, 14])}, n_classes=14)  # 56 rows of 14 per image
    clf = OnnxClassifier(bad)
    with pytest.raises(DataError, match=r"liar.onnx: its graph gave 'probs' of shape \(112, 14\) for 2 images, "
                                        r"not \(2, 14\)"):
        clf.predict_probs(kmnist.test_x[:2])


def test_allocations_are_capped_by_the_arena(onnx, tmp_path, kmnist):
    """Hostile attributes on ops export writes: a Conv padded to 263 MB per image, computed on each batch or
    (constant) by constant folding on load. With the cap lowered to 64 MiB (a fresh process: the arena is
    registered once), both are one line and exit 2, and a padding of 200 runs; the shipped 2 GiB cap works alike."""
    small = _pad_bomb(tmp_path / "small.onnx", 200)
    assert OnnxClassifier(small).predict_probs(kmnist.test_x[:2]).shape == (2, 10)
    code = ("import sys; from kmnist_fa.infer import runtime; runtime.MAX_RUN_BYTES = 64 << 20; "
            "from kmnist_fa.runtime import main; sys.exit(main(sys.argv[1:]))")
    png = str(onnx["dir"] / "a.png")
    for f, want in ((small, 0), (_pad_bomb(tmp_path / "bomb.onnx", 1000), 2),
                    (_pad_bomb(tmp_path / "constant.onnx", 1000, constant=True), 2)):
        r = subprocess.run([sys.executable, "-c", code, png, "--model", str(f), "--json"], capture_output=True,
                           text=True, timeout=120)
        assert r.returncode == want, r.stderr
        if want:
            assert r.stderr.startswith(f"error: {f}: its graph failed on 1 images (") and r.stderr.count("\n") == 1, r.stderr
            assert "Available memory of " in r.stderr  # the arena's cap refused it (onnxruntime's words)


@pytest.mark.slow
def test_every_built_in_architecture_exports_only_allowed_ops(tmp_path):
    """What `kmnist-fa export` writes for each registered architecture, and for an ensemble, passes the runtime's
    op check (untrained weights: the graph's ops do not depend on them)."""
    import torch

    from kmnist_fa.infer.export import Preprocessed, _onnx
    from kmnist_fa.infer.runtime import _check_ops
    from kmnist_fa.models.registry import ARCHS, create_model

    for arch, n in [(a, 1) for a, spec in ARCHS.items() if spec.params] + [("lenet5", 2)]:  # the built-ins
        model = Preprocessed([create_model(arch, 10).eval() for _ in range(n)], [0.2] * n, [0.3] * n).eval()
        f = tmp_path / f"{arch}-{n}.onnx"
        _onnx(model, torch.zeros(2, 28, 28), {}, f)
        _check_ops(f, f.read_bytes())
