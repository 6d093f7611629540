"""fastai DataBlock pipeline over in-memory MNIST-family arrays.

Items are integer indices into a uint8 array, so nothing is decoded or written per
image. Batches are built by fancy-indexing the whole array (`ArrayDL`), which gives
exactly what fastai's per-item collation would give (a test checks this) at a
fraction of the Python work. All augmentation is batch-level (`batch_tfms`) and runs
on the DataLoaders' device: the GPU when there is one.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial, reduce
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from fastai.data.block import CategoryBlock, DataBlock, TransformBlock
from fastai.data.core import DataLoaders, Datasets, TfmdDL
from fastai.data.transforms import Categorize, IntToFloatTensor, Normalize
from fastai.torch_core import TensorCategory, TensorImage, TensorImageBW
from fastai.vision.augment import (
    AffineCoordTfm,
    Brightness,
    Contrast,
    PadMode,
    RandomErasing,
    Warp,
    Zoom,
)
from fasttransform import Pipeline, Transform
from PIL.Image import Image as PILImage

from ..config.options import AUG_PRESETS, SplitSpec
from ..core.errors import DataError, OptionError
from ..core.speedups import no_subclass_dispatch
from .datasets import MnistData
from .images import image_array
from .splits import split_indices
from .stats import image_stats


class ArrayImage(Transform):
    """Index -> 1x28x28 uint8 `TensorImageBW` taken from an in-memory array.

    Anything else is taken for an image, so `learn.predict` / `dls.test_dl` accept what
    fastai users pass (a PIL image, a path, an array or tensor), prepared as `kmnist-fa
    predict` prepares files. A loaded run's Learner holds no images (`holds_data` off):
    an index there is refused rather than answered with a blank placeholder.
    """

    # what fastai's `test_dl` matches an item against to decide which transforms it still needs
    input_types = (int, np.integer, np.ndarray, torch.Tensor, PILImage, str, Path, bytes)

    def __init__(self, images: np.ndarray, holds_data: bool = True):
        super().__init__()
        self.images, self.holds_data = torch.from_numpy(np.ascontiguousarray(images)), holds_data

    def encodes(self, i) -> TensorImageBW:  # untyped: items are numpy ints too
        if isinstance(i, (int, np.integer)) and not isinstance(i, bool):
            if not self.holds_data:
                raise DataError(f"predict: {i!r} is an index, and a loaded run holds no images; pass a PIL "
                                "image, an image path, or a 28x28 array or tensor")
            return TensorImageBW(self.images[i][None])

        return TensorImageBW(torch.from_numpy(image_array(i))[None])

    def batch(self, idx: np.ndarray) -> TensorImageBW:
        return TensorImageBW(self.images[torch.as_tensor(idx, dtype=torch.long)][:, None])


class ArrayLabel(Transform):
    """Index -> class name, so fastai's `Categorize` owns the vocab and decoding."""

    def __init__(self, labels: np.ndarray, vocab: Sequence[str]):
        super().__init__()
        # not `vocab`: fastai gathers that attribute across the pipeline and would find two
        self.labels, self.names = torch.as_tensor(np.asarray(labels), dtype=torch.long), list(vocab)

    def encodes(self, i) -> str:
        return self.names[int(self.labels[i])]

    def batch(self, idx: np.ndarray) -> TensorCategory:
        return TensorCategory(self.labels[torch.as_tensor(idx, dtype=torch.long)])


def _column(tl) -> torch.Tensor | None:
    """Whole-split tensor for one TfmdLists, when its pipeline is one we can vectorise."""
    fs = [f for f in tl.tfms.fs if type(f) is not Transform]  # DataBlock adds a bare noop get_x
    items = list(tl.items)
    if not all(isinstance(i, (int, np.integer)) for i in items[:1]):  # images for predict: fastai's item path
        return None
    items = np.asarray(items, dtype=np.int64)
    if len(fs) == 1 and isinstance(fs[0], ArrayImage) and fs[0].holds_data:
        return fs[0].batch(items)
    if len(fs) == 2 and isinstance(fs[0], ArrayLabel) and isinstance(fs[1], Categorize) \
            and list(fs[1].vocab) == fs[0].names:
        return fs[0].batch(items)
    return None


class UntypedOpsPipeline(Pipeline):
    """fastai's batch-transform Pipeline with the tensor subclasses' `__torch_function__` off.

    Transforms still dispatch on TensorImage / TensorCategory (the batch keeps its types
    and fasttransform re-types every result), but the torch ops inside them run
    without fastai's Python-level type propagation: identical batches (tested), in less
    time (docs/benchmarks.md for the measurement).
    """

    def __call__(self, o):
        with no_subclass_dispatch():
            return super().__call__(o)


class ArrayDL(TfmdDL):
    """A `TfmdDL` that builds each batch with one indexing op per column.

    Falls back to fastai's per-item path for any dataset it does not recognise,
    so `dls.test_dl(...)` with foreign items still works.
    """

    shard: tuple[int, int] | None = None  # (rank, world size) in data-parallel training (`train.ddp`)

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.after_batch = UntypedOpsPipeline(self.after_batch, split_idx=self.after_batch.split_idx)

    def get_idxs(self):
        """This process's slice of the epoch's order; every process draws the same order (same seed)."""
        idxs = super().get_idxs()
        if self.shard is None:
            return idxs
        rank, size = self.shard
        return list(idxs)[rank:len(idxs) // size * size:size]

    def __len__(self):
        if self.shard is None:
            return super().__len__()
        n = self.n // self.shard[1]
        return n // self.bs + (0 if self.drop_last or n % self.bs == 0 else 1)

    def create_batches(self, samps):
        cols = self._columns()
        if cols is None:
            yield from super().create_batches(samps)
            return
        for idx in self.chunkify(samps):
            idx = torch.as_tensor(idx, dtype=torch.long)
            yield tuple(c[idx].as_subclass(t) for c, t in cols)

    def _columns(self):
        """(plain tensor, fastai type) per column: indexing the plain tensor skips fastai's dispatch."""
        if "_cols" not in self.__dict__:
            ds = self.dataset
            cols = [_column(tl) for tl in ds.tls] if isinstance(ds, Datasets) else [None]
            self.__dict__["_cols"] = None if any(c is None for c in cols) else \
                [(c.as_subclass(torch.Tensor), type(c)) for c in cols]
        return self.__dict__["_cols"]


# --------------------------------------------------------------------------- augmentation

def _affine(a, b, c, d, e, f) -> torch.Tensor:
    """Per-image [[a, b, c], [d, e, f], [0, 0, 1]]: fastai's `affine_mat` in one stack instead of four."""
    zero, one = torch.zeros_like(a), torch.ones_like(a)
    return torch.stack([a, b, c, d, e, f, zero, zero, one], 1).view(-1, 3, 3)


def shift_mat(x: torch.Tensor, max_px: float = 2.0, p: float = 1.0) -> torch.Tensor:
    """Random translation of up to `max_px` pixels in x and y, per image."""
    n, (h, w) = x.size(0), x.shape[-2:]
    keep = (x.new_empty(n).uniform_() < p).float()
    tx = x.new_empty(n).uniform_(-1, 1) * keep * (2 * max_px / w)  # grid coords span 2 over w pixels
    ty = x.new_empty(n).uniform_(-1, 1) * keep * (2 * max_px / h)
    one, zero = torch.ones_like(tx), torch.zeros_like(tx)
    return _affine(one, zero, tx, zero, one, ty)


def rotation_mat(x: torch.Tensor, max_deg: float = 15.0) -> torch.Tensor:
    """fastai's `rotate_mat` with p=1: the same draw and matrices (tested), in a third of the ops."""
    theta = x.new_empty(x.size(0)).uniform_(-max_deg, max_deg) * math.pi / 180
    cos, sin, zero = theta.cos(), theta.sin(), torch.zeros_like(theta)
    return _affine(cos, sin, zero, -sin, cos, zero)


class TrainOnlyAffine(AffineCoordTfm):
    """fastai's affine/coord resample, skipped outright on validation batches.

    fastai's `AffineCoordTfm` still resamples validation batches through an identity
    grid, which costs time and perturbs pixels by float rounding; validation images
    must reach the model untouched. The matrices are fastai's (same draws, same
    product, tested) built from plain tensors in fewer ops: fastai's typed-tensor
    version cost more than the maths for 64 small images (bench.py, LeNet5).
    """

    def before_call(self, b, split_idx):
        while isinstance(b, tuple):
            b = b[0]
        self.split_idx, self.do = split_idx, split_idx == 0  # training (and fastai tta) only, like RandTransform
        if not self.do:
            return
        x = b.as_subclass(torch.Tensor)
        mats = [f(x).as_subclass(torch.Tensor) for f in self.aff_fs]  # fastai's zoom wraps its draw as TensorBase
        for t in self.coord_fs:
            t.before_call(b)
        h, w = x.shape[-2:]
        mat = reduce(torch.matmul, mats, torch.eye(3, device=x.device).expand(x.size(0), 3, 3).contiguous())
        mat[:, 0, 1] *= h / w  # fastai's `_prepare_mat`: rotations on non-square images
        mat[:, 1, 0] *= w / h
        self.mat = mat[:, :2]

    def encodes(self, x: TensorImage):
        if len(self.coord_fs):  # warps need fastai's coordinate pipeline
            return super().encodes(x)
        # shift/rotate/zoom only: the one affine resample fastai's affine_coord would do, on plain tensors
        plain = x.as_subclass(torch.Tensor)
        grid = F.affine_grid(self.mat, list(plain.shape), align_corners=True)
        out = F.grid_sample(plain, grid, mode="bilinear", padding_mode="zeros", align_corners=True)
        return out.as_subclass(type(x))


def aug_tfms(preset: str = "light") -> list:
    """Batch augmentations for a preset. Never flips: a mirrored kana is another glyph or none.

    All geometric changes compose into one resample per batch; padding is zeros
    (the black background), not fastai's default reflection, which would mirror
    strokes in from the border.
    """
    if preset not in AUG_PRESETS:
        raise OptionError(f"--aug must be one of {', '.join(AUG_PRESETS)}, got {preset!r}")
    if preset == "none":
        return []
    affine = TrainOnlyAffine(aff_fs=[partial(shift_mat, max_px=2.0), partial(rotation_mat, max_deg=15)],
                             pad_mode=PadMode.Zeros, align_corners=True)
    if preset == "light":
        return [affine]
    affine.compose(Zoom(min_zoom=0.9, max_zoom=1.1, p=0.75))
    affine.compose(Warp(magnitude=0.2, p=0.5))
    lighting = Brightness(max_lighting=0.2, p=0.75)
    lighting.compose(Contrast(max_lighting=0.2, p=0.75))
    return [affine, lighting]


# --------------------------------------------------------------------------- DataLoaders

@dataclass
class DataInfo:
    """What a model must remember about its data: stats, classes, split."""

    mean: float
    std: float
    classes: list[str]
    chars: list[str] | None
    split: SplitSpec
    aug: str
    train_idx: np.ndarray
    valid_idx: np.ndarray
    pseudo: dict | None = None  # what self-training added to the training split (`pipelines.teachers`)


class MnistDataLoaders(DataLoaders):
    """fastai's `DataLoaders`, carrying the `DataInfo` a run records and a loaded model needs."""

    def __init__(self, *loaders, info: DataInfo | None = None, path=".", device=None):
        super().__init__(*loaders, path=path, device=device)
        self.info = info

    def new_empty(self):
        new = super().new_empty()
        new.info = self.info
        return new


def batch_tfms(mean: float, std: float, aug: str = "none", erase: float = 0.0) -> list:
    """Batch transforms: to float, the preset's augmentation, normalisation, and (training batches only)
    fastai's RandomErasing, which fills its rectangles with noise on the normalised scale."""
    tfms = [IntToFloatTensor(), *aug_tfms(aug), Normalize.from_stats([mean], [std], cuda=False)]
    return tfms + [RandomErasing(p=erase, max_count=1)] if erase else tfms


def default_device(cpu: bool = False) -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() and not cpu else "cpu")


def make_dls(data: MnistData, split: SplitSpec | None = None, aug: str = "light", bs: int = 64,
             device: torch.device | str | None = None, stats: tuple[float, float] | None = None,
             extra: tuple[np.ndarray, np.ndarray] | None = None, erase: float = 0.0) -> MnistDataLoaders:
    """DataLoaders for a split of the labelled images.

    Normalisation stats come from the training split only (as in the report), unless
    `stats` is given (fine-tuning keeps the parent's); they travel in `dls.info`.
    `extra` (images, labels) joins the training split only: pseudo-labelled images.
    """
    split = split or SplitSpec()
    if bs < 1:
        raise OptionError(f"--bs must be at least 1, got {bs}")
    train_idx, valid_idx = split_indices(data.train_y, split)
    if not split.full and len(valid_idx) == 0:
        raise OptionError(f"--valid-pct {split.valid_pct} leaves no validation images out of {len(train_idx):,}; "
                          "raise it, or train on everything with --full")
    if bs > len(train_idx):
        raise OptionError(f"--bs {bs} is larger than the {len(train_idx):,} training images: an epoch would be a "
                          "single step")
    mean, std = stats or image_stats(data.train_x[train_idx])
    x, y = data.train_x, data.train_y
    if extra is not None and len(extra[0]):
        train_idx = np.concatenate([train_idx, np.arange(len(y), len(y) + len(extra[0]))])
        x, y = np.concatenate([x, extra[0]]), np.concatenate([y, extra[1].astype(y.dtype)])
    block = DataBlock(
        blocks=(TransformBlock(type_tfms=ArrayImage(x)), CategoryBlock(vocab=data.classes, sort=False)),
        get_y=ArrayLabel(y, data.classes),
        splitter=lambda _: (list(train_idx), list(valid_idx)),
        batch_tfms=batch_tfms(mean, std, aug, erase),
    )
    dls = block.dataloaders(np.arange(len(y)), bs=bs, dl_type=ArrayDL, num_workers=0,
                            device=device or default_device(), drop_last=len(train_idx) > bs)
    info = DataInfo(mean, std, list(data.classes), data.chars, split, aug, train_idx, valid_idx)
    return MnistDataLoaders(*dls.loaders, info=info, path=dls.path, device=dls.device)


def array_dl(dls: DataLoaders, images: np.ndarray, labels: np.ndarray | None = None, bs: int | None = None) -> ArrayDL:
    """A validation-style DataLoader over any uint8 image array (test sets, uploads).

    Built from the DataLoaders' own transforms rather than `dls.test_dl`, so it works
    the same for a fresh training run and for a run loaded from disk.
    """
    vocab = list(dls.vocab)
    tfms = [[ArrayImage(images)]]
    if labels is not None:
        tfms.append([ArrayLabel(labels, vocab), Categorize(vocab=vocab, sort=False)])
    ds = Datasets(np.arange(len(images)), tfms=tfms, n_inp=1)
    return dls.valid.new(ds, bs=bs or dls.valid.bs, shuffle=False, drop_last=False)


def inference_dls(classes: Sequence[str], mean: float, std: float, device=None, bs: int = 256,
                  aug: str = "none") -> DataLoaders:
    """DataLoaders with no data but the right vocab, normalisation and (for TTA) augmentation."""
    blank = np.zeros((1, 28, 28), dtype=np.uint8)  # fastai's setup needs one item to infer types
    block = DataBlock(
        blocks=(TransformBlock(type_tfms=ArrayImage(blank)), CategoryBlock(vocab=list(classes), sort=False)),
        get_y=ArrayLabel(np.zeros(1, dtype=np.int64), classes),
        splitter=lambda _: ([0], [0]),
        batch_tfms=batch_tfms(mean, std, aug),
    )
    dls = block.dataloaders(np.arange(1), bs=bs, dl_type=ArrayDL, num_workers=0, device=device or default_device())
    for tl in dls.train_ds.tls:  # fastai's setup needed the placeholder; from now on it is not an image
        for f in tl.tfms.fs:
            if isinstance(f, ArrayImage):
                f.holds_data = False
    return dls


def sample_batch(dls: DataLoaders, n: int = 32, train: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """A batch as the model sees it (augmented if `train`), back in uint8 for display."""
    dl = (dls.train if train else dls.valid).new(bs=n, shuffle=train, drop_last=False)
    xb, yb = dl.one_batch()
    x = (xb.float() * dls.info.std + dls.info.mean).clamp(0, 1) * 255
    return x[:, 0].round().byte().cpu().numpy(), yb.cpu().numpy()
