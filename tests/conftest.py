"""Shared fixtures: real KMNIST images (the committed kmnist-mini sample; the full KMNIST-10k sample for the
accuracy tests that need it), synthetic datasets, one trained LeNet5 run."""
from __future__ import annotations

import os
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
from fastai.callback.core import Callback

warnings.filterwarnings("ignore", category=FutureWarning)
os.environ.setdefault("OMP_NUM_THREADS", "2")

# 1,200 labelled + 300 unlabelled real images, committed (tests/data/kmnist-mini/README.md): every clone has them
KMNIST_MINI = Path(__file__).resolve().parent / "data" / "kmnist-mini"
# the full 6,000 + 4,000 sample beside the checkout (as in CI); KMNIST_FA_TEST_DATA points elsewhere
KMNIST_10K = Path(os.environ.get("KMNIST_FA_TEST_DATA")
                  or Path(__file__).resolve().parents[1].parent / "shared" / "data" / "kmnist-10k")


def pytest_collection_modifyitems(config, items):
    """Tests that read the full dataset are marked `full_data` (so `-m "not full_data"` runs without it); tests
    marked `gpu` skip, with their reason, where torch sees no CUDA device."""
    import torch

    no_gpu = pytest.mark.skip(reason="needs a CUDA device (gpu tier); torch sees none here")
    for item in items:
        if "kmnist_full_dir" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.full_data)
        if "gpu" in item.keywords and not torch.cuda.is_available():
            item.add_marker(no_gpu)


@pytest.fixture(scope="session")
def kmnist_dir() -> Path:
    return KMNIST_MINI


@pytest.fixture(scope="session")
def kmnist(kmnist_dir):
    from kmnist_fa.data.datasets import load_dataset

    return load_dataset(data=kmnist_dir)


@pytest.fixture(scope="session")
def kmnist_full_dir() -> Path:
    """The full KMNIST-10k sample, for accuracy tests. CI has it beside the checkout: there a missing
    dataset fails the test instead of skipping it; elsewhere the test skips with its reason."""
    if not (KMNIST_10K / "train-images-idx3-ubyte.gz").exists():
        msg = (f"full KMNIST sample not found at {KMNIST_10K} (it sits beside the checkout in CI; "
               "KMNIST_FA_TEST_DATA names another folder)")
        if os.environ.get("CI"):
            pytest.fail(msg)
        pytest.skip(msg)
    return KMNIST_10K


@pytest.fixture(scope="session")
def kmnist_full(kmnist_full_dir):
    from kmnist_fa.data.datasets import load_dataset

    return load_dataset(data=kmnist_full_dir)


def synthetic_arrays(n: int, n_classes: int = 10, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Learnable toy images: class k is a bright horizontal bar at row 2k+4, plus noise."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % n_classes
    x = rng.integers(0, 40, size=(n, 28, 28), dtype=np.uint8)
    for i, k in enumerate(y):
        x[i, 2 * (k % 12) + 3, 4:24] = 255
    return x, y.astype(np.uint8)


def write_synthetic(root: Path, n_train: int = 200, n_test: int = 50, n_classes: int = 10, fmt: str = "idx-gz",
                    test_labels: bool = True, classmap: list[str] | None = None) -> Path:
    """A dataset folder in one of the family's layouts: idx-gz, idx (plain) or npz."""
    from kmnist_fa.core.formats import write_idx, write_npz

    root.mkdir(parents=True, exist_ok=True)
    (xtr, ytr), (xte, yte) = synthetic_arrays(n_train, n_classes, 0), synthetic_arrays(n_test, n_classes, 1)
    if fmt == "npz":
        names = ["toy-train-imgs.npz", "toy-train-labels.npz", "toy-test-imgs.npz", "toy-test-labels.npz"]
        writer = write_npz
    else:
        ext = ".gz" if fmt == "idx-gz" else ""
        names = [f"train-images-idx3-ubyte{ext}", f"train-labels-idx1-ubyte{ext}",
                 f"t10k-images-idx3-ubyte{ext}", f"t10k-labels-idx1-ubyte{ext}"]
        writer = write_idx
    for name, arr in zip(names, (xtr, ytr, xte, yte)):
        if arr is yte and not test_labels:
            continue
        writer(root / name, arr)
    if classmap:
        rows = "\n".join(f"{i},U+{ord(c):04X},{c}" for i, c in enumerate(classmap))
        (root / "toy_classmap.csv").write_text("index,codepoint,char\n" + rows + "\n", encoding="utf-8")
    return root


@pytest.fixture
def synth(tmp_path) -> Path:
    return write_synthetic(tmp_path / "toy")


def lenet_cfg(data, **kw):
    """A small LeNet5 config on `data` that learns within a few epochs of the 1,080-image training split
    (modules set their own defaults with `functools.partial`; a test's keywords override both)."""
    from kmnist_fa.config.options import TrainConfig

    return TrainConfig.build(**{**dict(arch="lenet5", epochs=2, lr=1e-2, bs=16, aug="light", data=str(data.root)),
                                **kw})


class Interrupt(Callback):
    """Simulates Ctrl-C right after an epoch's files are written (RunRecorder's order is 55)."""

    order = 90

    def __init__(self, after_epoch: int):
        self.at = after_epoch

    def after_epoch(self):
        if self.epoch == self.at:
            raise KeyboardInterrupt


@pytest.fixture(scope="session")
def lenet_run(kmnist, tmp_path_factory):
    """One LeNet5 run trained on the real sample, shared by the tests that only read it."""
    from kmnist_fa.config.options import TrainConfig
    from kmnist_fa.pipelines.training import train

    root = tmp_path_factory.mktemp("models")
    cfg = TrainConfig.build(arch="lenet5", epochs=8, lr=1e-2, bs=32, data=str(kmnist.root))
    return train(cfg, name="lenet-fixture", root=root, quiet=True, data=kmnist)


@pytest.fixture(scope="module")
def teacher(lenet_run, tmp_path_factory) -> Path:
    """A models folder holding the shared LeNet5 run as `teacher`: what self-training, distillation and transfer
    take (each module gets its own copy, which it may change)."""
    root = tmp_path_factory.mktemp("teacher")
    shutil.copytree(lenet_run.path, root / "teacher")
    return root
