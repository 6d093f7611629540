"""Shared fixtures: the real KMNIST-10k sample, synthetic datasets, one trained LeNet5 run."""
from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import pytest

warnings.filterwarnings("ignore", category=FutureWarning)
os.environ.setdefault("OMP_NUM_THREADS", "2")

# beside the checkout (as in CI); KMNIST_FA_TEST_DATA points elsewhere (e.g. on a lent GPU machine)
KMNIST_10K = Path(os.environ.get("KMNIST_FA_TEST_DATA")
                  or Path(__file__).resolve().parents[1].parent / "shared" / "data" / "kmnist-10k")


@pytest.fixture(scope="session")
def kmnist_dir() -> Path:
    if not (KMNIST_10K / "train-images-idx3-ubyte.gz").exists():
        pytest.skip(f"real KMNIST sample not found at {KMNIST_10K} (it sits beside the checkout in CI)")
    return KMNIST_10K


@pytest.fixture(scope="session")
def kmnist(kmnist_dir):
    from kmnist_fa.data.datasets import load_dataset

    return load_dataset(data=kmnist_dir)


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


@pytest.fixture(scope="session")
def lenet_run(kmnist, tmp_path_factory):
    """One LeNet5 run trained on the real sample, shared by the tests that only read it."""
    from kmnist_fa.config.options import TrainConfig
    from kmnist_fa.pipelines.training import train

    root = tmp_path_factory.mktemp("models")
    cfg = TrainConfig.build(arch="lenet5", epochs=4, lr=3e-3, data=str(kmnist.root))
    return train(cfg, name="lenet-fixture", root=root, quiet=True, data=kmnist)
