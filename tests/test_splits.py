import numpy as np
import pytest

from kmnist_fa.config.options import SplitSpec
from kmnist_fa.core.errors import OptionError
from kmnist_fa.data.splits import split_indices

LABELS = np.repeat(np.arange(10), 60)


def test_holdout_deterministic_stratified_disjoint():
    tr, va = split_indices(LABELS, SplitSpec(valid_pct=0.1, seed=1))
    tr2, va2 = split_indices(LABELS, SplitSpec(valid_pct=0.1, seed=1))
    np.testing.assert_array_equal(va, va2)
    assert np.bincount(LABELS[va]).tolist() == [6] * 10
    assert len(np.intersect1d(tr, va)) == 0 and len(tr) + len(va) == len(LABELS)
    _, va3 = split_indices(LABELS, SplitSpec(valid_pct=0.1, seed=2))
    assert not np.array_equal(va, va3)


def test_kfold_covers_everything_once():
    valids = [split_indices(LABELS, SplitSpec(n_folds=5, fold=k, seed=3))[1] for k in range(5)]
    allv = np.concatenate(valids)
    assert sorted(allv.tolist()) == list(range(len(LABELS)))  # each image validates exactly once
    for v in valids:
        assert np.bincount(LABELS[v], minlength=10).tolist() == [12] * 10
    assert not np.array_equal(valids[0], valids[1])


def test_full_has_no_validation():
    tr, va = split_indices(LABELS, SplitSpec(full=True))
    assert len(tr) == len(LABELS) and len(va) == 0


@pytest.mark.parametrize("kw,msg", [
    (dict(n_folds=5), "--fold must be in 0..4"),
    (dict(n_folds=5, fold=5), "--fold must be in 0..4"),
    (dict(n_folds=1, fold=0), "--n-folds must be at least 2"),
    (dict(fold=1), "--fold needs --n-folds"),
    (dict(full=True, n_folds=3, fold=0), "cannot be combined"),
    (dict(valid_pct=1.5), r"--valid-pct must be in \(0, 1\), got 1.5"),
])
def test_bad_split_options(kw, msg):
    with pytest.raises(OptionError, match=msg):
        SplitSpec(**kw)
