import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from kmnist_fa.cli import app
from kmnist_fa.core.errors import OptionError, RunError
from kmnist_fa.core.predictions import submission_csv
from kmnist_fa.data.images import collect_inputs, frame
from kmnist_fa.infer.ensemble import agreement, combine
from kmnist_fa.infer.predict import load_run, predict_probs, run_data, tta_parts, validation_set

runner = CliRunner()


@pytest.fixture(scope="module")
def loaded(lenet_run):
    return load_run(lenet_run.path)


@pytest.fixture(scope="module")
def valid(loaded):
    x, y, notes = validation_set(loaded, run_data(loaded))
    assert notes == []
    return x, y


def test_loaded_run_reproduces_recorded_validation_accuracy(loaded, valid, lenet_run):
    x, y = valid
    acc = float((predict_probs(loaded, x).argmax(1).numpy() == y).mean())
    assert acc == pytest.approx(lenet_run.record.best.accuracy, abs=1e-6)


def test_probabilities_sum_to_one_with_and_without_tta(loaded, valid):
    x = valid[0][:64]
    for tta in (False, True):
        p = predict_probs(loaded, x, tta=tta, n=2)
        assert p.shape == (64, 10)
        assert torch.allclose(p.sum(1), torch.ones(64), atol=1e-5)


def test_tta_clean_pass_equals_plain_and_augmented_passes_differ(loaded, valid):
    x = valid[0][:128]
    plain = predict_probs(loaded, x)
    clean, aug, blended = tta_parts(loaded, x, n=2)
    assert torch.allclose(clean, plain, atol=1e-6)
    assert not torch.allclose(aug, plain, atol=1e-3)
    assert torch.allclose(blended, 0.75 * aug + 0.25 * clean, atol=1e-6)


def test_ensemble_of_one_equals_the_run(loaded, valid):
    p = predict_probs(loaded, valid[0][:50])
    assert torch.allclose(combine([p], "mean"), p)
    assert torch.equal(combine([p], "vote").argmax(1), p.argmax(1))


def test_vote_tie_break_is_seeded():
    a = torch.eye(3)[[0, 1, 2, 0]]
    b = torch.eye(3)[[1, 2, 0, 0]]  # rows 0-2 tie 1:1, row 3 agrees
    v1, v2 = combine([a, b], "vote", seed=1), combine([a, b], "vote", seed=1)
    assert torch.equal(v1.argmax(1), v2.argmax(1))
    assert int(v1.argmax(1)[3]) == 0
    picks = {tuple(combine([a, b], "vote", seed=s).argmax(1)[:3].tolist()) for s in range(20)}
    assert len(picks) > 1  # different seeds break ties differently
    for row, (i, j) in zip(v1[:3].argmax(1).tolist(), [(0, 1), (1, 2), (2, 0)]):
        assert row in (i, j)  # a tie is only ever broken between the tied classes
    assert torch.allclose(v1.sum(1), torch.ones(4))
    with pytest.raises(OptionError, match="--method must be one of"):
        combine([a], "median")


def test_disagreement_matrix():
    a, b = torch.eye(2)[[0, 0, 1, 1]], torch.eye(2)[[0, 1, 1, 1]]
    m = agreement([a, b])
    assert m[0, 1] == m[1, 0] == 0.25 and m[0, 0] == 0


def test_submission_csv_bytes():
    assert submission_csv(["0", "1", "2"], torch.tensor([3, 0, 9])) == "Id,Category\n0,3\n1,0\n2,9\n"


def test_frame_keeps_28x28_and_inverts(valid):
    img = valid[0][0]
    assert np.array_equal(frame(img), img)
    assert np.array_equal(frame(255 - img), img)  # dark ink on white is detected and inverted
    assert np.array_equal(frame(255 - img, invert="no"), 255 - img)


def test_png_inputs_other_sizes_inverted_and_corrupt(loaded, valid, tmp_path):
    x, y = valid
    probs = predict_probs(loaded, x)
    conf, pred = probs.max(1)
    picks = [i for i in range(len(x)) if conf[i] > 0.95 and pred[i] == y[i]][:10]
    for k, i in enumerate(picks):
        Image.fromarray(x[i]).resize((112, 112), Image.BICUBIC).save(tmp_path / f"big{k:02d}.png")
        Image.fromarray(255 - x[i]).save(tmp_path / f"inv{k:02d}.png")
        Image.fromarray(255 - x[i]).convert("RGB").resize((60, 60)).save(tmp_path / f"rgb{k:02d}.jpg", quality=95)
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)
    got = collect_inputs([tmp_path])
    assert len(got.errors) == 1 and "broken.png: not a readable image" in got.errors[0]
    assert len(got.ids) == 3 * len(picks) and got.ids == sorted(got.ids)
    p = predict_probs(loaded, got.images).argmax(1).numpy()
    truth = {f"{kind}{k:02d}": y[i] for k, i in enumerate(picks) for kind in ("big", "inv", "rgb")}
    hits = {kind: np.mean([p[j] == truth[n.split(".")[0]] for j, n in enumerate(got.ids) if n.startswith(kind)])
            for kind in ("big", "inv", "rgb")}
    assert hits["inv"] == 1.0  # exact inverse of a 28x28 image: identical input
    assert hits["big"] >= 0.8 and hits["rgb"] >= 0.8, hits


def test_predict_cli_csv_and_corrupt_file(lenet_run, valid, tmp_path):
    x, _ = valid
    for i in range(3):
        Image.fromarray(x[i]).save(tmp_path / f"ok{i}.png")
    (tmp_path / "zz.png").write_bytes(b"junk")
    r = runner.invoke(app, ["predict", str(tmp_path), "-m", str(lenet_run.path), "--out", str(tmp_path / "s.csv")])
    assert r.exit_code == 1
    assert "zz.png: not a readable image" in r.output
    lines = (tmp_path / "s.csv").read_bytes().split(b"\n")
    assert lines[0] == b"Id,Category" and [row.split(b",")[0] for row in lines[1:4]] == [b"ok0.png", b"ok1.png", b"ok2.png"]
    assert b"\r" not in (tmp_path / "s.csv").read_bytes()


def test_predict_idx_file_ids_are_positions(lenet_run, kmnist_dir, tmp_path):
    r = runner.invoke(app, ["predict", str(kmnist_dir / "t10k-images-idx3-ubyte.gz"), "-m", str(lenet_run.path),
                            "--out", str(tmp_path / "s.csv"), "--probs", str(tmp_path / "p.csv")])
    assert r.exit_code == 0, r.output
    rows = (tmp_path / "s.csv").read_text().splitlines()
    assert len(rows) == 301 and rows[1].startswith("0,") and rows[-1].startswith("299,")
    header = (tmp_path / "p.csv").read_text().splitlines()[0]
    assert header == "Id,Category,o,ki,su,tsu,na,ha,ma,ya,re,wo"


def test_ensemble_cli(lenet_run, tmp_path):
    import json

    r = runner.invoke(app, ["ensemble", str(lenet_run.path), str(lenet_run.path), "--json",
                            "--out", str(tmp_path / "e.csv")])
    assert r.exit_code == 0, r.output
    res = json.loads(r.output[: r.output.rindex("}") + 1])
    assert res["shared_split"] is True
    member, ens = res["rows"][0], res["rows"][-1]
    assert member["valid_acc"] == pytest.approx(lenet_run.record.best.accuracy, abs=1e-6)
    assert ens["valid_acc"] == member["valid_acc"] and member["agreement"] == 1.0
    assert (tmp_path / "e.csv").read_text().count("\n") == 301
    assert (tmp_path / "e_disagreement.png").exists()


def test_classes_must_match(loaded):
    from copy import deepcopy

    from kmnist_fa.infer.ensemble import check_members

    other = deepcopy(loaded)
    other.record.classes = [str(i) for i in range(10)]
    with pytest.raises(OptionError, match="differ from"):
        check_members([loaded, other])


def test_load_run_rejects_wrong_weights(lenet_run, tmp_path):
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(lenet_run.path, bad)
    torch.save({"fc.weight": torch.zeros(3)}, bad / "model.pth")
    with pytest.raises(RunError, match="does not fit lenet5"):
        load_run(bad)


def test_predict_works_out_of_the_box_with_reference_models(valid, tmp_path):
    """`kmnist-fa predict char.png` with no --model uses the shipped default, with its own TTA setting."""
    from kmnist_fa.runs.paths import reference_default

    x, y = valid
    Image.fromarray(255 - x[0]).resize((90, 90)).save(tmp_path / "char.png")
    r = runner.invoke(app, ["predict", str(tmp_path / "char.png"), "--out", str(tmp_path / "s.csv")])
    assert r.exit_code == 0, r.output
    assert ("no TTA" in r.output) == (not reference_default()["tta"].on)
    assert (tmp_path / "s.csv").read_text().splitlines()[1] == f"char.png,{y[0]}"
    r = runner.invoke(app, ["predict", str(tmp_path / "char.png"), "--out", str(tmp_path / "t.csv"), "--tta",
                            "--tta-n", "2"])
    assert r.exit_code == 0 and "TTA 2 passes, clean-pass weight" in r.output


def test_tta_predictions_repeat_byte_for_byte(lenet_run, kmnist_dir, tmp_path):
    """Same inputs, runs, options and seed: the same submission, whatever ran before (TTA is seeded)."""
    import torch

    from kmnist_fa.core.formats import read_idx, write_idx

    x = read_idx(kmnist_dir / "t10k-images-idx3-ubyte.gz", 3)[:400]
    write_idx(tmp_path / "x-idx3-ubyte", x)
    args = ["predict", str(tmp_path / "x-idx3-ubyte"), "-m", str(lenet_run.path), "--tta", "--tta-n", "3"]
    outs = []
    for i, seed in enumerate((42, 42, 7)):
        torch.rand(i + 1)  # disturb the global RNG between the calls
        r = runner.invoke(app, [*args, "--seed", str(seed), "--probs", str(tmp_path / f"p{i}.csv"),
                                "--out", str(tmp_path / f"s{i}.csv")])
        assert r.exit_code == 0, r.output
        outs.append((tmp_path / f"p{i}.csv").read_bytes())
    assert outs[0] == outs[1] and outs[0] != outs[2]
    for i in (0, 1):
        r = runner.invoke(app, ["ensemble", str(lenet_run.path), str(lenet_run.path), "--tta", "--tta-n", "2",
                                "--data", str(kmnist_dir), "--out", str(tmp_path / f"e{i}.csv")])
        assert r.exit_code == 0, r.output
    assert (tmp_path / "e0.csv").read_bytes() == (tmp_path / "e1.csv").read_bytes()


def test_inference_progress_counts_every_pass(loaded, valid, monkeypatch):
    """The bar of predict/ensemble/evaluate/interpret: every image of every TTA pass, shown on a terminal only."""
    import io

    from rich.console import Console

    from kmnist_fa.cli import progress

    x = valid[0][:100]
    term = io.StringIO()
    monkeypatch.setattr(progress, "err", Console(file=term, force_terminal=True, width=100))
    n_cbs = len(loaded.learn.cbs)
    with progress.inference_progress([loaded], quiet=False, total=300):
        predict_probs(loaded, x, tta=True, n=2)
        seen = [cb for cb in loaded.learn.cbs if type(cb).__name__ == "ImagesSeen"]
        assert len(seen) == 1
    assert len(loaded.learn.cbs) == n_cbs and "300/300" in term.getvalue()
    monkeypatch.setattr(progress, "err", Console(file=io.StringIO(), force_terminal=False))
    with progress.inference_progress([loaded], quiet=False):  # piped: no bar, no callback
        assert len(loaded.learn.cbs) == n_cbs


def test_predict_json(lenet_run, valid, tmp_path):
    import json

    from PIL import Image

    Image.fromarray(valid[0][0]).save(tmp_path / "a.png")
    r = runner.invoke(app, ["predict", str(tmp_path / "a.png"), "-m", str(lenet_run.path), "--json"])
    got = json.loads(r.stdout)
    rows = got["rows"]
    assert r.exit_code == 0 and rows[0]["id"] == "a.png" and rows[0]["name"] == lenet_run.record.classes[rows[0]["class"]]
    assert 0.1 < rows[0]["prob"] <= 1 and rows[0]["char"] == lenet_run.record.chars[rows[0]["class"]]
    assert got["used"] == {"runs": ["lenet-fixture"], "model_file": None, "tta": False, "tta_n": None,
                           "tta_beta": None, "method": "mean", "seed": 42}
    r = runner.invoke(app, ["predict", str(tmp_path / "a.png"), "-m", str(lenet_run.path), "-m", str(lenet_run.path),
                            "--tta", "--tta-n", "2", "--method", "vote", "--seed", "5"])
    title = "predictions (1 images; 2 runs (lenet-fixture, lenet-fixture; vote), TTA 2 passes, clean-pass weight 0.25, seed 5)"
    assert r.exit_code == 0 and title in " ".join(r.output.split())  # the title wraps at the table's width


def test_learn_predict_takes_what_fastai_users_pass(lenet_run, loaded, valid, tmp_path):
    """A loaded run's Learner is a fastai Learner: `learn.predict` on a PIL image, a path, an array
    or a tensor gives what `kmnist-fa predict` gives for the same image file."""
    import json

    from kmnist_fa.core.errors import DataError

    img = Image.fromarray(255 - np.kron(valid[0][3], np.ones((3, 3), np.uint8)))  # 84x84, dark ink on white
    img.save(tmp_path / "c.png")
    r = runner.invoke(app, ["predict", str(tmp_path / "c.png"), "-m", str(lenet_run.path), "--json"])
    cli = json.loads(r.stdout)["rows"][0]
    learn = loaded.learn
    for item in (img, tmp_path / "c.png", str(tmp_path / "c.png"), np.asarray(img), torch.tensor(np.asarray(img)),
                 np.asarray(img, np.float32) / 255):
        name, idx, probs = learn.predict(item)
        assert (name, int(idx)) == (loaded.classes[cli["class"]], cli["class"])
        assert float(probs.max()) == pytest.approx(cli["prob"], abs=1e-4)
    assert learn.predict(valid[0][3])[0] == learn.predict(img)[0]  # framed the same way as a 28x28 dataset image
    with pytest.raises(DataError, match="is an index, and a loaded run holds no images"):
        learn.predict(np.int64(0))
    with pytest.raises(DataError, match="expected a 2-D grayscale array"):
        learn.predict(np.zeros((3, 28, 28)))
    assert learn.path == lenet_run.path  # fastai callbacks that write to learn.path keep to the run


def test_fastai_callbacks_write_into_the_run_folder(kmnist, tmp_path):
    from fastai.callback.progress import CSVLogger

    from kmnist_fa.config.options import TrainConfig
    from kmnist_fa.pipelines.training import train

    cfg = TrainConfig.build(arch="lenet5", epochs=1, lr=3e-3, data=str(kmnist.root), aug="none")
    res = train(cfg, name="csv", root=tmp_path, quiet=True, data=kmnist, cbs=[CSVLogger(fname="fastai_log.csv")])
    log = (res.path / "fastai_log.csv").read_text().splitlines()
    assert log[0].startswith("epoch,train_loss,valid_loss,accuracy") and len(log) == 2
    assert res.learn.path == res.path and not list(res.path.glob("tmp*"))


@pytest.fixture(scope="module")
def hub(lenet_run, tmp_path_factory):
    """The shared run exported as a hub folder (config.json + model.safetensors)."""
    pytest.importorskip("safetensors", reason="the export extra is not installed")
    from kmnist_fa.infer.export import export

    return export([load_run(lenet_run.path, cpu=True)], tmp_path_factory.mktemp("hub") / "hub", "hub")


def _hub_copy(hub, tmp_path, state=None, n_params=None):
    """A copy of `hub` with other weights or another recorded parameter count."""
    import json
    import shutil

    from safetensors.torch import save_file

    bad = tmp_path / "bad-hub"
    shutil.copytree(hub, bad)
    if state is not None:
        save_file(state, str(bad / "model.safetensors"))
    if n_params is not None:
        cfg = json.loads((bad / "config.json").read_text())
        cfg["run"]["n_params"] = n_params
        (bad / "config.json").write_text(json.dumps(cfg))
    return bad


@pytest.mark.parametrize("dtype", [torch.float64, torch.int8, torch.bool, torch.float16])
def test_hub_folder_weights_of_another_dtype_are_refused(hub, tmp_path, dtype):
    """load_state_dict would cast them silently; the architecture holds float32, so they are not a kmnist-fa
    export's, and the message names the hub folder's own files."""
    from safetensors.torch import load_file

    state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in load_file(str(hub / "model.safetensors")).items()}
    bad = _hub_copy(hub, tmp_path, state=state)
    with pytest.raises(RunError, match=rf"model\.safetensors: \S+ is {dtype}, but lenet5 holds torch\.float32 \(\d+ "):
        load_run(bad)
    r = CliRunner().invoke(app, ["predict", str(tmp_path / "x.png"), "--model", str(bad)])
    assert r.exit_code == 2 and "model.safetensors: " in r.output and r.output.strip().count("\n") == 0, r.output


def test_hub_folder_errors_name_its_own_files(hub, tmp_path):
    assert load_run(hub).record.n_params > 0
    with pytest.raises(RunError, match=r"bad-hub/model\.safetensors: does not fit lenet5"):
        load_run(_hub_copy(hub, tmp_path, state={"fc.weight": torch.zeros(3)}))
    with pytest.raises(RunError, match=r"bad-hub/config\.json: records 7 parameters but lenet5 builds"):
        load_run(_hub_copy(hub, tmp_path / "n", n_params=7))


def test_run_weights_of_another_dtype_are_refused(lenet_run, tmp_path):
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(lenet_run.path, bad)
    state = torch.load(bad / "model.pth", weights_only=True)
    torch.save({k: v.double() if v.is_floating_point() else v for k, v in state.items()}, bad / "model.pth")
    with pytest.raises(RunError, match=r"model\.pth: \S+ is torch\.float64, but lenet5 holds torch\.float32"):
        load_run(bad)
