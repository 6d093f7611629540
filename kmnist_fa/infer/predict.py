"""Runs loaded back from disk, and their predictions with and without TTA.

`load_run` needs only run.json + model.pth: the architecture, classes and
normalisation come from run.json, so a run predicts on a machine that never saw its
training data. Predictions go through fastai's `get_preds` and `tta` on this
project's `ArrayDL`, built from the run's own transforms (`array_dl`) rather than
`dls.test_dl`, which is what makes TTA work the same for fresh and loaded runs.
"""
from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from fastai.callback.progress import ProgressCallback
from fastai.learner import Learner
from fastai.losses import CrossEntropyLossFlat
from fastai.metrics import accuracy, error_rate
from fastai.torch_core import no_random
from fastai.vision.augment import RandTransform
from fastcore.basics import noop
from fasttransform import Pipeline, Transform

from .. import runs
from ..config.options import TTA_N, SplitSpec, TtaSettings
from ..core.errors import DataError, RunError
from ..core.predictions import image_seed
from ..data.datasets import MnistData, load_dataset
from ..data.pipeline import array_dl, default_device, inference_dls
from ..data.splits import split_indices
from ..models.archs import splitter
from ..models.registry import create_model, n_params
from ..runs.record import RunRecord
from ..train.learner import SCRATCH_DIR, ToolkitLearner

TTA_SEED = 42  # TTA's random augmentations are drawn from this seed: same inputs, same predictions


@dataclass
class LoadedRun:
    name: str
    path: Path
    record: RunRecord
    learn: Learner
    tta: TtaSettings = TtaSettings()  # how TTA predicts: the run's own settings (`--tta` when it was trained)

    @property
    def classes(self) -> list[str]:
        return self.record.classes

    @property
    def chars(self) -> list[str] | None:
        return self.record.chars

    def split(self) -> SplitSpec:
        return self.record.config.split


def load_run(name_or_path: str | Path, root: str | Path | None = None, device=None, cpu: bool = False,
             tta: TtaSettings | None = None) -> LoadedRun:
    """Rebuild a run's Learner for inference from run.json + model.pth alone.

    `tta` says how TTA predicts: the augmentation its passes replay (default: the
    run's training preset, `light` for a run trained without augmentation) and the
    clean pass's weight; unset, the run's own settings (its `--tta`, `--tta-n`,
    `--tta-beta`, fastai's n=4 and 0.25 unless it chose others).
    """
    path = runs.run_path(name_or_path, root)
    rec = RunRecord.read(path)
    hub = runs.is_hub_folder(path)
    weights = path / (runs.HUB_WEIGHTS if hub else runs.MODEL_FILE)
    m = rec.config.model
    model = create_model(m.arch, len(rec.classes), m.bn, m.dropout)
    if n_params(model) != rec.n_params:
        raise RunError(f"{path / (runs.HUB_CONFIG if hub else runs.RUN_FILE)}: records {rec.n_params:,} parameters "
                       f"but {m.arch} builds {n_params(model):,}; the architecture changed since this run was saved")
    state = _hub_state(weights) if hub else runs.load_state(weights)
    try:
        model.load_state_dict(state)
    except (RuntimeError, TypeError, AttributeError) as e:
        raise RunError(f"{weights}: does not fit {m.arch} ({str(e).splitlines()[0][:160]})") from None
    # load_state_dict casts silently: float64, int8 or bool weights are not this architecture's, so not ours
    odd = [(k, state[k].dtype, v.dtype) for k, v in model.state_dict().items() if state[k].dtype != v.dtype]
    if odd:
        k, got, want = odd[0]
        raise RunError(f"{weights}: {k} is {got}, but {m.arch} holds {want}"
                       f"{f' ({len(odd)} tensors differ)' if len(odd) > 1 else ''}; not weights kmnist-fa saved")
    tta = tta or rec.config.predict.settings()
    aug = tta.aug or rec.config.reg.aug
    dls = inference_dls(rec.classes, rec.norm.mean, rec.norm.std, device or default_device(cpu),
                        aug="light" if aug == "none" else aug)
    learn = ToolkitLearner(dls, model, loss_func=CrossEntropyLossFlat(), metrics=[accuracy, error_rate], splitter=splitter,
                           path=path, model_dir=SCRATCH_DIR)
    learn.remove_cb(ProgressCallback)
    learn.logger = noop
    return LoadedRun(rec.name, path, rec, learn, tta)


def _hub_state(f: Path) -> dict:
    """The state_dict of an exported hub folder (safetensors: tensors only, never code)."""
    try:
        from safetensors.torch import load_file
    except ImportError:
        raise RunError(f'{f}: reading it needs safetensors: pip install "kmnist-fa[export]"') from None
    try:
        return load_file(str(f))
    except Exception as e:  # safetensors raises its own error types for damaged files
        raise RunError(f"{f}: corrupt safetensors file ({type(e).__name__})") from None


def predict_probs(run: LoadedRun, images: np.ndarray, tta: bool = False, n: int = TTA_N,
                  labels: np.ndarray | None = None, seed: int = TTA_SEED) -> torch.Tensor:
    """Class probabilities (N x C, rows sum to 1) for uint8 images, optionally with TTA.

    TTA is fastai's `Learner.tta`: `n` passes with the run's training augmentation,
    averaged, then blended with the clean pass (clean weight `run.tta.beta`); the passes'
    random augmentations come from `seed`, so repeating a prediction repeats its result.
    """
    if len(images) == 0:
        return torch.zeros(0, len(run.classes))
    return tta_parts(run, images, n, labels, seed)[2] if tta else _plain(run, images, labels)


def _plain(run: LoadedRun, images: np.ndarray, labels=None) -> torch.Tensor:
    dl = array_dl(run.learn.dls, images, labels)
    probs, _ = run.learn.get_preds(dl=dl)
    return probs.float().cpu()


def tta_parts(run: LoadedRun, images: np.ndarray, n: int = TTA_N, labels=None, seed: int = TTA_SEED):
    """(clean probs, mean of augmented-pass probs, blended probs)."""
    if n < 1:
        raise DataError(f"--tta-n must be at least 1, got {n}")
    dl = array_dl(run.learn.dls, images, labels)
    dl.after_batch.fs = [PerImageDraws(dl.after_batch.fs, seed, lambda: run.learn.epoch)]  # tta sets the pass no.
    with no_random(seed, reproducible=False):  # the caller's random streams are put back after
        (aug, clean), _ = run.learn.tta(dl=dl, n=n, beta=None)
    aug, clean = aug.float().cpu(), clean.float().cpu()
    return clean, aug, torch.lerp(aug, clean, run.tta.beta)


class PerImageDraws(Transform):
    """A batch's transforms for TTA, whose random draws are made image by image, each from a seed of its own.

    fastai draws a batch's augmentations from one random stream, so an image's TTA
    probabilities would depend on which images share its batch and where it sits: the
    same PNG predicted alone or beside others would differ. Seeding each image from
    (seed, pass, its pixels) makes its result a function of the image and the seed alone.
    Only the draws go image by image: each random transform's `before_call` (fastai's
    hook that draws a batch's parameters) runs on every image, the per-image parameters
    it leaves (tensors with the batch as first dimension) are stacked, and the transform
    is applied to the batch as one (benchmarks/tta_draws.py measures the cost).
    """

    def __init__(self, tfms, seed: int, pass_no: Callable[[], int]):
        super().__init__()
        self.tfms, self.seed, self.pass_no = Pipeline(tfms).fs, seed, pass_no  # Pipeline sorts them by order

    def __call__(self, b, split_idx=None, **kwargs):
        for t in self.tfms:
            b = self._per_image(t, b) if split_idx == 0 and isinstance(t, RandTransform) else t(b, split_idx=split_idx)
        return b

    def _per_image(self, t: RandTransform, b):
        x = b[0] if isinstance(b, tuple) else b
        pixels = x.detach().cpu().numpy()  # one copy per batch
        holders = [t, *getattr(t, "fs", ()), *getattr(t, "coord_fs", ())]  # where fastai keeps what it drew
        plain, drawn = x.as_subclass(torch.Tensor), []  # draws need no fastai types, and are faster without
        for i, p in enumerate(pixels):
            seed_draws(image_seed(self.seed, self.pass_no(), p.tobytes()), x.device)
            t.before_call(plain[i:i + 1], split_idx=0)
            if not t.do:  # skipped for this image alone (p < 1): the batch cannot share one decision
                raise DataError(f"TTA: {type(t).__name__} with p < 1 cannot draw per image")
            drawn.append([{k: v for k, v in vars(h).items() if torch.is_tensor(v) and v.ndim and len(v) == 1}
                          for h in holders])
        for h, states in zip(holders, zip(*drawn)):
            for k in states[0]:
                setattr(h, k, torch.cat([s[k] for s in states]))
        return Transform.__call__(t, b, split_idx=0)  # RandTransform's own __call__ would draw again


def seed_draws(seed: int, device: torch.device) -> None:
    """Seed every stream fastai's augmentations draw from (random, numpy, torch on `device`).

    fastai's `set_seed` does the same, but `torch.manual_seed` also queues a CUDA seeding
    that records a stack trace on machines without an initialised GPU: 0.5 ms a call,
    which per-image TTA would pay thousands of times.
    """
    random.seed(seed)
    np.random.seed(seed)
    gen = torch.cuda.default_generators[device.index or 0] if device.type == "cuda" else torch.default_generator
    gen.manual_seed(seed)


def run_data(run: LoadedRun, data: str | Path | None = None, dataset: str | None = None) -> MnistData:
    """The dataset a run was trained on (or the one asked for)."""
    if data is None and dataset is None:
        d = run.record.data
        if d.named:
            dataset = d.name
        data = d.root
    return load_dataset(dataset, data)


def validation_set(run: LoadedRun, data: MnistData) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """The run's own validation images and labels, with warnings when they cannot be trusted."""
    notes = []
    if data.fingerprint != run.record.data.fingerprint:
        notes.append(f"{run.name}: trained on other data ({run.record.data.name}); "
                     f"its 'validation' split of {data.name} may include its training images")
    split = run.split()
    if split.full:
        notes.append(f"{run.name}: trained with --full; it has no validation split, every labelled image was "
                     "a training image")
        return np.zeros((0, 28, 28), np.uint8), np.zeros(0, np.int64), notes
    _, valid = split_indices(data.train_y, split)
    return data.train_x[valid], data.train_y[valid], notes
