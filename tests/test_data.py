import numpy as np
import pytest
import torch

from kmnist_fa.config.options import SplitSpec
from kmnist_fa.core.errors import OptionError
from kmnist_fa.data.pipeline import AUG_PRESETS, ArrayDL, array_dl, aug_tfms, make_dls, sample_batch
from kmnist_fa.data.stats import image_stats


@pytest.fixture(scope="module")
def dls(kmnist):
    return make_dls(kmnist, SplitSpec(valid_pct=0.1, seed=0), aug="heavy", bs=64, device="cpu")


def test_batches_are_normalised_typed_and_sized(dls):
    xb, yb = dls.one_batch()
    assert xb.shape == (64, 1, 28, 28) and xb.dtype == torch.float32
    assert type(xb).__name__ == "TensorImageBW" and type(yb).__name__ == "TensorCategory"
    assert len(dls.train.dataset) == 1080 and len(dls.valid.dataset) == 120
    assert list(dls.vocab) == ["o", "ki", "su", "tsu", "na", "ha", "ma", "ya", "re", "wo"]


def test_fast_batches_equal_fastai_per_item_collation(dls):
    """ArrayDL's one-indexing-op batches must be exactly what fastai's own per-item path builds."""
    dl = dls.valid
    assert dl._columns() is not None
    fast = next(iter(dl.create_batches(range(dl.bs))))
    slow = next(iter(super(ArrayDL, dl).create_batches(range(dl.bs))))
    for f, s in zip(fast, slow):
        assert type(f) is type(s)
        assert torch.equal(f, s)


def test_stats_come_from_training_split_only(kmnist, dls):
    """Training normalises with the torch-free `data.stats`, the numbers `kmnist-fa data info` prints."""
    mean, std = image_stats(kmnist.train_x[dls.info.train_idx])
    assert (dls.info.mean, dls.info.std) == (mean, std)
    assert mean != image_stats(kmnist.train_x)[0]
    # and they are what the valid batches are normalised with
    x = torch.from_numpy(kmnist.train_x[dls.info.valid_idx[:64]]).float()[:, None] / 255
    xb, _ = dls.valid.one_batch()
    assert torch.allclose(xb.cpu(), (x - mean) / std, atol=1e-5)


def test_augmentation_changes_train_but_never_valid(kmnist):
    plain = make_dls(kmnist, SplitSpec(seed=0), aug="none", bs=32, device="cpu")
    heavy = make_dls(kmnist, SplitSpec(seed=0), aug="heavy", bs=32, device="cpu")
    vp, vh = plain.valid.one_batch()[0], heavy.valid.one_batch()[0]
    assert torch.equal(vp, vh) and torch.equal(vh, heavy.valid.one_batch()[0])
    fixed = plain.train.new(shuffle=False)
    fixed_aug = heavy.train.new(shuffle=False)
    tp, ta = fixed.one_batch()[0], fixed_aug.one_batch()[0]
    assert torch.equal(tp, fixed.one_batch()[0])  # no augmentation: repeatable
    assert not torch.allclose(tp, ta, atol=1e-3)  # heavy augmentation moved pixels
    assert not torch.equal(ta, fixed_aug.one_batch()[0])  # and draws anew each time


def test_presets_and_unknown_preset():
    assert aug_tfms("none") == []
    assert len(aug_tfms("light")) == 1  # shift + rotate composed into one resample
    names = {type(t).__name__ for t in aug_tfms("heavy")}
    assert not any("Flip" in n or "Dihedral" in n for n in names)
    with pytest.raises(OptionError, match="--aug must be one of"):
        aug_tfms("extreme")


def test_array_dl_for_test_images(kmnist, dls):
    dl = array_dl(dls, kmnist.test_x[:100])
    xb = torch.cat([b[0] for b in dl])
    assert xb.shape == (100, 1, 28, 28)
    expected = (torch.from_numpy(kmnist.test_x[:100]).float()[:, None] / 255 - dls.info.mean) / dls.info.std
    assert torch.allclose(xb.cpu(), expected, atol=1e-5)


def test_sample_batch_roundtrips_to_uint8(kmnist):
    plain = make_dls(kmnist, SplitSpec(seed=0), aug="none", bs=16, device="cpu")
    imgs, ys = sample_batch(plain, 8, train=False)
    np.testing.assert_array_equal(imgs, kmnist.train_x[plain.info.valid_idx[:8]])
    np.testing.assert_array_equal(ys, kmnist.train_y[plain.info.valid_idx[:8]])


def test_fast_affine_equals_fastai_affine_coord(kmnist):
    """The light preset's plain-tensor resample gives exactly fastai's affine_coord output."""
    from fastai.data.transforms import IntToFloatTensor
    from fastai.torch_core import TensorImageBW
    from fastai.vision.augment import AffineCoordTfm

    (tfm,) = aug_tfms("light")
    x = IntToFloatTensor()(TensorImageBW(torch.from_numpy(kmnist.train_x[:32])[:, None]))
    tfm.before_call((x,), split_idx=0)
    fast = tfm.encodes(x)
    assert type(fast) is TensorImageBW
    assert torch.equal(fast, AffineCoordTfm.encodes(tfm, x))


@pytest.mark.parametrize("preset", ["light", "heavy"])
def test_affine_matrices_equal_fastai(kmnist, preset):
    """The plain-tensor matrices are fastai's: same random draws, rotate_mat's values, the same product."""
    from functools import partial

    from fastai.torch_core import TensorImageBW
    from fastai.vision.augment import AffineCoordTfm, rotate_mat

    from kmnist_fa.data.pipeline import rotation_mat

    tfm = aug_tfms(preset)[0]
    fastai_fs = [partial(rotate_mat, max_deg=f.keywords["max_deg"], p=1.0) if getattr(f, "func", None) is rotation_mat
                 else f for f in tfm.aff_fs]
    ref = AffineCoordTfm(aff_fs=fastai_fs, coord_fs=tfm.coord_fs, align_corners=True)
    x = TensorImageBW(torch.from_numpy(kmnist.train_x[:32])[:, None].float() / 255)
    torch.manual_seed(3)
    tfm.before_call((x,), split_idx=0)
    torch.manual_seed(3)
    ref.before_call((x,), split_idx=0)
    assert len(fastai_fs) == (2 if preset == "light" else 3)
    assert type(tfm.mat) is torch.Tensor and torch.equal(tfm.mat, ref.mat.as_subclass(torch.Tensor))
    assert not torch.equal(tfm.mat, torch.eye(3)[:2].expand(32, 2, 3))  # it did draw


@pytest.mark.parametrize("preset", AUG_PRESETS)
def test_untyped_pipeline_gives_fastai_batches(kmnist, preset):
    """Training batches through ArrayDL's pipeline (subclass dispatch off) equal fastai's own Pipeline's."""
    from fasttransform import Pipeline

    from kmnist_fa.data.pipeline import UntypedOpsPipeline

    dl = make_dls(kmnist, SplitSpec(seed=0), aug=preset, bs=32, device="cpu").train
    assert type(dl.after_batch) is UntypedOpsPipeline and type(dl.new().after_batch) is UntypedOpsPipeline
    raw = next(dl.create_batches(range(32)))
    fastai_pipe = Pipeline(list(dl.after_batch.fs), split_idx=0)
    dl.after_batch.split_idx = 0
    torch.manual_seed(5)
    ours = dl.after_batch(raw)
    torch.manual_seed(5)
    theirs = fastai_pipe(raw)
    for a, b in zip(ours, theirs):
        assert type(a) is type(b) and torch.equal(a.as_subclass(torch.Tensor), b.as_subclass(torch.Tensor))
    fastai_pipe.split_idx = 1  # validation: no augmentation
    assert torch.equal(ours[0], fastai_pipe(raw)[0]) == (preset == "none")


def test_image_stats_exact_and_chunked(kmnist):
    """Integer sums in chunks give float64's mean/std (to rounding), whatever the chunk size."""
    from kmnist_fa.core.errors import DataError

    x = kmnist.train_x[:1000]
    ref = x.astype(np.float64) / 255
    for chunk in (1, 7, 4096):
        mean, std = image_stats(x, chunk)
        assert mean == pytest.approx(ref.mean(), rel=1e-12) and std == pytest.approx(ref.std(), rel=1e-12)
    with pytest.raises(DataError, match="same pixel value everywhere"):  # std 0 would make every input NaN
        image_stats(np.full((3, 28, 28), 255, np.uint8))
    with pytest.raises(DataError, match="no images"):
        image_stats(x[:0])


@pytest.mark.parametrize("which,expected", [  # `kmnist-fa data info --json` before the stats left pipeline.py
    ("mini", (0.1814483293317327, 0.3391344067622858)),
    pytest.param("full", (0.18415198829531812, 0.34139581031563304), marks=pytest.mark.full_data),
])
def test_image_stats_unchanged_on_the_kmnist_samples(which, expected, request):
    from kmnist_fa.data.datasets import load_dataset

    folder = request.getfixturevalue("kmnist_dir" if which == "mini" else "kmnist_full_dir")
    assert image_stats(load_dataset(data=folder).train_x) == expected


def test_split_and_batch_size_that_would_train_nonsense(kmnist):
    with pytest.raises(OptionError, match="--valid-pct 0.0001 leaves no validation images"):
        make_dls(kmnist, SplitSpec(valid_pct=0.0001), bs=64, device="cpu")
    with pytest.raises(OptionError, match="--bs 10000 is larger than the 1,080 training images"):
        make_dls(kmnist, SplitSpec(), bs=10000, device="cpu")


def test_speedup_fallbacks(monkeypatch):
    """Private names live in kmnist_fa.core.speedups only; without them the public path is taken."""
    import contextlib

    from fastai.callback.core import _inner_loop

    from kmnist_fa.core import speedups

    assert speedups.PER_BATCH_EVENTS == speedups.FALLBACK_EVENTS == tuple(_inner_loop)  # the fallback mirrors fastai
    assert type(speedups.no_subclass_dispatch()).__name__ == "DisableTorchFunctionSubclass"
    monkeypatch.delattr(torch._C, "DisableTorchFunctionSubclass")
    assert isinstance(speedups.no_subclass_dispatch(), contextlib.nullcontext)


def test_training_without_the_private_patches_is_identical(synth, tmp_path, monkeypatch):
    """With both patches switched back to stock fastai (what the fallbacks amount to when a private name
    disappears), a heavy-augmentation run gives the same losses and weights."""
    import contextlib

    from kmnist_fa.config.options import TrainConfig
    from kmnist_fa.core import speedups
    from kmnist_fa.data import pipeline as kdata
    from kmnist_fa.pipelines.training import train

    cfg = TrainConfig.build(arch="lenet5", epochs=2, lr=3e-3, bs=32, aug="heavy", data=str(synth))
    a = train(cfg, name="patched", root=tmp_path, quiet=True)
    monkeypatch.setattr(speedups, "PER_BATCH_EVENTS", ())
    monkeypatch.setattr(kdata, "no_subclass_dispatch", contextlib.nullcontext)
    b = train(cfg, name="stock", root=tmp_path, quiet=True)
    strip = lambda h: [{k: v for k, v in row.items() if k != "seconds"} for row in h]  # noqa: E731
    assert strip(a.record.history) == strip(b.record.history)
    sa, sb = a.learn.model.state_dict(), b.learn.model.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


def test_random_erasing_touches_training_batches_only(kmnist):
    """--erase: fastai's RandomErasing cuts one noisy rectangle into training images; validation is untouched."""
    from fastai.torch_core import set_seed

    def batches(erase):  # the same images in the same order (every RNG seeded), with and without erasing
        set_seed(0)
        dls = make_dls(kmnist, SplitSpec(seed=0), "none", 64, "cpu", erase=erase)
        set_seed(1)
        return dls.train.one_batch()[0], dls.valid.one_batch()[0]

    (t0, v0), (t1, v1) = batches(0.0), batches(1.0)
    assert torch.equal(v0, v1)
    changed = (t0 != t1).flatten(1)
    assert changed.any(1).float().mean() > 0.8  # (almost) every image erased: p=1, a rectangle may be tiny
    assert changed.float().mean() < 0.3  # rectangles, not whole images: the same images were compared
    rows, cols = (t0 != t1).any(3)[:, 0], (t0 != t1).any(2)[:, 0]  # one rectangle: changed rows and cols contiguous
    for r, c in zip(rows, cols):
        for m in (r, c):
            idx = m.nonzero().flatten()
            assert len(idx) == 0 or idx[-1] - idx[0] + 1 == len(idx)
