import hashlib
import http.server
import threading
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from kmnist_fa.core.errors import DataError
from kmnist_fa.core.formats import write_idx
from kmnist_fa.data import datasets
from kmnist_fa.data.datasets import load_dataset, md5sum

from .conftest import synthetic_arrays, write_synthetic


@pytest.mark.parametrize("sample,n_train,n_test", [("kmnist_full", 6000, 4000), ("kmnist", 1200, 300)])
def test_real_kmnist_sample(request, sample, n_train, n_test):
    """The full KMNIST-10k sample and the committed kmnist-mini drawn from it read alike."""
    kmnist = request.getfixturevalue(sample)
    assert kmnist.train_x.shape == (n_train, 28, 28) and kmnist.train_x.dtype == np.uint8
    assert kmnist.test_x.shape == (n_test, 28, 28)
    assert kmnist.test_y is None and not kmnist.has_test_labels  # unlabelled test set is normal
    assert np.bincount(kmnist.train_y).tolist() == [n_train // 10] * 10
    assert kmnist.chars == list("おきすつなはまやれを")
    assert kmnist.classes == ["o", "ki", "su", "tsu", "na", "ha", "ma", "ya", "re", "wo"]
    assert kmnist.label(0) == "お o"
    assert {f["status"] for f in kmnist.files.values()} == {"custom"}  # a re-split, not the official files


@pytest.mark.parametrize("fmt", ["idx-gz", "idx", "npz"])
def test_folder_formats(tmp_path, fmt):
    d = load_dataset(data=write_synthetic(tmp_path / fmt, fmt=fmt))
    x, y = synthetic_arrays(200)
    np.testing.assert_array_equal(d.train_x, x)
    np.testing.assert_array_equal(d.train_y, y)
    assert d.test_y is not None and len(d.test_x) == 50
    assert d.classes == [str(i) for i in range(10)] and d.chars is None


def test_classmap_gives_names_and_romaji(tmp_path):
    d = load_dataset(data=write_synthetic(tmp_path / "t", n_classes=3, classmap=list("あいう")))
    assert d.classes == ["a", "i", "u"] and d.chars == ["あ", "い", "う"]


def test_unlabelled_test_set(tmp_path):
    d = load_dataset(data=write_synthetic(tmp_path / "t", test_labels=False))
    assert d.test_y is None and len(d.test_x) == 50


def test_count_mismatch(tmp_path):
    root = write_synthetic(tmp_path / "t")
    write_idx(root / "train-labels-idx1-ubyte.gz", np.zeros(150, np.uint8))
    with pytest.raises(DataError, match="150 labels for 200 images"):
        load_dataset(data=root)


def test_label_out_of_range(tmp_path):
    root = write_synthetic(tmp_path / "t", n_classes=3, classmap=list("あいう"))
    y = np.zeros(200, np.uint8)
    y[5] = 7
    write_idx(root / "train-labels-idx1-ubyte.gz", y)
    with pytest.raises(DataError, match="label 7 outside the 3 classes"):
        load_dataset(data=root)


def test_missing_files_and_folder(tmp_path):
    with pytest.raises(DataError, match="is not a folder"):
        load_dataset(data=tmp_path / "absent")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no train images file found"):
        load_dataset(data=tmp_path / "empty")


def test_named_dataset_md5_enforced(tmp_path):
    root = write_synthetic(tmp_path / "t")
    with pytest.raises(DataError, match="does not match the published kmnist file"):
        load_dataset("kmnist", root)
    with pytest.raises(DataError, match="unknown dataset 'nope'"):
        load_dataset("nope", root)


def test_env_var_and_precedence(tmp_path, monkeypatch):
    a, b = write_synthetic(tmp_path / "a", n_train=100), write_synthetic(tmp_path / "b", n_train=120)
    monkeypatch.setenv("KMNIST_FA_DATA", str(a))
    assert len(load_dataset().train_y) == 100
    assert len(load_dataset(data=b).train_y) == 120  # --data wins over the env var


def test_fastai_folder_is_default(tmp_path, monkeypatch):
    monkeypatch.delenv("KMNIST_FA_DATA", raising=False)
    monkeypatch.setattr(datasets, "fastai_data_dir", lambda: tmp_path)
    with pytest.raises(DataError, match=r"kmnist-fa data download kmnist"):
        load_dataset()


# ------------------------------------------------------------------ download over loopback

class RangeHandler(http.server.SimpleHTTPRequestHandler):
    """Static files with HTTP Range support (http.server has none); records Range headers."""

    ranges: list = []

    def log_message(self, *a):
        pass

    def do_GET(self):
        path = Path(self.directory) / self.path.lstrip("/")
        if not path.is_file():
            self.send_error(404)
            return
        data = path.read_bytes()
        rng = self.headers.get("Range")
        RangeHandler.ranges.append((self.path, rng))
        start = int(rng.split("=")[1].split("-")[0]) if rng else 0
        self.send_response(206 if rng else 200)
        self.send_header("Content-Length", str(len(data) - start))
        self.end_headers()
        drop = getattr(RangeHandler, "drop_after", None)
        self.wfile.write(data[start:start + drop] if drop else data[start:])  # a connection that dies early


@pytest.fixture
def server(tmp_path):
    src = write_synthetic(tmp_path / "served")
    handler = lambda *a, **k: RangeHandler(*a, directory=str(src), **k)  # noqa: E731
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    t = threading.Thread(target=httpd.serve_forever, daemon=True)
    t.start()
    RangeHandler.ranges = []
    yield src, f"http://127.0.0.1:{httpd.server_address[1]}/"
    httpd.shutdown()


@pytest.fixture
def tiny_spec(server, monkeypatch):
    src, url = server
    spec = replace(datasets.DATASETS["mnist"], name="tiny", mirrors=(url,), classmap=None,
                   md5={f: (md5sum(src / f),) for f in datasets.DATASETS["mnist"].files.values()})
    monkeypatch.setitem(datasets.DATASETS, "tiny", spec)
    return spec


def test_download_verifies_and_loads(tmp_path, tiny_spec):
    dest = tmp_path / "dl"
    seen = []
    datasets.download("tiny", dest, progress=lambda f, d, t: seen.append((f, d, t)))
    for f, md5 in tiny_spec.md5.items():
        assert md5sum(dest / f) == md5[0]
    assert not list(dest.glob("*.part"))
    assert seen[-1][1] == seen[-1][2]  # progress reached the total
    d = load_dataset("tiny", dest)  # named: MD5s enforced and pass
    assert d.named and len(d.train_y) == 200


def test_download_resumes_partial_file(tmp_path, server, tiny_spec):
    src, _ = server
    dest = tmp_path / "dl"
    dest.mkdir()
    name = "train-images-idx3-ubyte.gz"
    full = (src / name).read_bytes()
    (dest / (name + ".part")).write_bytes(full[: len(full) // 2])
    datasets.download("tiny", dest)
    assert (dest / name).read_bytes() == full
    assert (f"/{name}", f"bytes={len(full) // 2}-") in RangeHandler.ranges


def test_download_rejects_wrong_md5(tmp_path, tiny_spec, monkeypatch):
    bad = replace(tiny_spec, md5={**tiny_spec.md5, "t10k-images-idx3-ubyte.gz": ("0" * 32,)})
    monkeypatch.setitem(datasets.DATASETS, "tiny", bad)
    with pytest.raises(DataError, match="has MD5 .* expected 0000"):
        datasets.download("tiny", tmp_path / "dl")
    assert not (tmp_path / "dl" / "t10k-images-idx3-ubyte.gz").exists()
    assert not list((tmp_path / "dl").glob("*.part"))


@pytest.mark.parametrize("bad", [b"garbage", b"truncated"])
def test_download_without_md5_checks_content_before_keeping(tmp_path, server, tiny_spec, monkeypatch, bad):
    """Where no MD5 is published (a mirror, K49's classmap), a broken file never takes the final name."""
    src, _ = server
    name = "train-labels-idx1-ubyte.gz"
    good = (src / name).read_bytes()
    (src / name).write_bytes(b"\x1f\x8b garbage" if bad == b"garbage" else good[: len(good) // 2])
    monkeypatch.setitem(datasets.DATASETS, "tiny", replace(tiny_spec, md5={}, counts={}))
    with pytest.raises(DataError, match=f"not a valid {name}"):
        datasets.download("tiny", tmp_path / "dl")
    assert not (tmp_path / "dl" / name).exists() and not list((tmp_path / "dl").glob("*.part"))
    (src / name).write_bytes(good)  # the mirror is fixed: the next run fetches and keeps it
    datasets.download("tiny", tmp_path / "dl")
    assert (tmp_path / "dl" / name).read_bytes() == good


def test_dropped_transfer_keeps_its_part_to_resume(tmp_path, server, tiny_spec, monkeypatch):
    src, _ = server
    name = "train-images-idx3-ubyte.gz"
    full = (src / name).read_bytes()
    monkeypatch.setattr(RangeHandler, "drop_after", len(full) // 3, raising=False)
    with pytest.raises(DataError, match="stopped at .* run the download again to resume"):
        datasets.download("tiny", tmp_path / "dl")
    assert (tmp_path / "dl" / (name + ".part")).stat().st_size == len(full) // 3
    monkeypatch.setattr(RangeHandler, "drop_after", None)
    datasets.download("tiny", tmp_path / "dl")
    assert (tmp_path / "dl" / name).read_bytes() == full


def test_download_offline_message(tmp_path):
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens here now
    with pytest.raises(DataError, match=r"cannot download .*Offline\? Put the files"):
        datasets.download("kmnist", tmp_path / "dl", mirror=f"http://127.0.0.1:{port}/")


def test_md5sum_matches_hashlib(tmp_path):
    p = tmp_path / "f"
    p.write_bytes(b"x" * 3_000_000)
    assert md5sum(p) == hashlib.md5(b"x" * 3_000_000).hexdigest()


def test_empty_dataset_and_nameless_classmap(tmp_path):
    from kmnist_fa.core.formats import write_idx

    root = write_synthetic(tmp_path / "toy")
    (root / "toy_classmap.csv").write_text("index\n0\n1\n")
    with pytest.raises(DataError, match="needs a column of names"):
        load_dataset(data=root)
    (root / "toy_classmap.csv").write_text("index,char\n0,a\n1,a\n")
    with pytest.raises(DataError, match="must be distinct"):
        load_dataset(data=root)
    (root / "toy_classmap.csv").unlink()
    write_idx(root / "train-images-idx3-ubyte.gz", np.zeros((0, 28, 28), np.uint8))
    write_idx(root / "train-labels-idx1-ubyte.gz", np.zeros(0, np.uint8))
    with pytest.raises(DataError, match="holds no images"):
        load_dataset(data=root)


def test_data_folder_is_fastais(monkeypatch, tmp_path):
    """Datasets live where fastai keeps its data, read without loading fastai: the same folder fastai names."""
    from fastai.data.external import fastai_cfg, fastai_path

    monkeypatch.setenv("FASTAI_HOME", str(tmp_path / "fastai-home"))
    fastai_cfg.cache_clear()
    try:
        assert datasets.fastai_data_dir() == Path(fastai_path("data"))
    finally:
        fastai_cfg.cache_clear()


# ------------------------------------------------------------------ K49: no published MD5s, published counts

def _fake_k49(root: Path, n_train: int = 100, n_test: int = 20) -> Path:
    """A well-formed K49 look-alike: npz files under K49's names, labels 0..48."""
    write_synthetic(root, n_train=n_train, n_test=n_test, n_classes=49, fmt="npz")
    for f in root.glob("toy-*.npz"):
        f.rename(root / f.name.replace("toy-", "k49-"))
    return root


def test_k49_holds_its_published_counts_and_classes():
    k49 = datasets.DATASETS["k49"]
    assert not k49.md5 and len(k49.classes) == 49  # no MD5s are published for K49; none are invented
    assert k49.counts == {"train_images": 232_365, "train_labels": 232_365, "test_images": 38_547,
                          "test_labels": 38_547}
    assert all(s.counts for s in datasets.DATASETS.values())


def test_fake_k49_from_a_mirror_is_refused_and_removed(tmp_path):
    """The issue's case: 100 random images labelled 0..48 served as K49 were 'verified'."""
    src = _fake_k49(tmp_path / "served")
    handler = lambda *a, **k: RangeHandler(*a, directory=str(src), **k)  # noqa: E731
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        with pytest.raises(DataError, match="not a valid k49-train-imgs.npz .100 images where the published k49 "
                                            "file has 232,365.; removed it"):
            datasets.download("k49", tmp_path / "dl", mirror=f"http://127.0.0.1:{httpd.server_address[1]}/")
    finally:
        httpd.shutdown()
    assert not any((tmp_path / "dl").iterdir())


def test_k49_counts_and_labels_enforced_on_load_and_shown(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from kmnist_fa.cli import app

    root = _fake_k49(tmp_path / "k49")
    with pytest.raises(DataError, match="100 images where the published k49 file has 232,365; delete it"):
        load_dataset("k49", root)
    r = CliRunner().invoke(app, ["data", "info", "k49", "--data", str(root)])
    assert r.exit_code == 2 and "verified" not in r.output and len(r.output.strip().splitlines()) == 1
    assert load_dataset(data=root).files["train_images"]["status"] == "custom"  # as a folder, it is its own dataset
    # as many as published: checked, and said so; a label beyond the 49 classes is not
    small = replace(datasets.DATASETS["k49"], counts={"train_images": 100, "train_labels": 100, "test_images": 20,
                                                      "test_labels": 20})
    monkeypatch.setitem(datasets.DATASETS, "k49", small)
    assert {f["status"] for f in load_dataset("k49", root).files.values()} == {"checked"}
    from kmnist_fa.core.formats import write_npz

    y = np.arange(20, dtype=np.uint8) % 49
    y[3] = 60
    write_npz(root / "k49-test-labels.npz", y)
    with pytest.raises(DataError, match=r"labels 0..60, outside the published k49 classes 0..48"):
        load_dataset("k49", root)
    assert not datasets._valid_file(root / "k49-test-labels.npz", small)  # a download would fetch it again
