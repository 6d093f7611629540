"""Deterministic, stratified train/validation splits over the labelled images.

Stratified because KMNIST-10k has only 600 images a class: a plain random 10%
holdout can be off by a dozen images in a class, which moves per-class recall by
several points. Everything depends on `seed` alone, never on global RNG state.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from .errors import OptionError


@dataclass(frozen=True)
class SplitSpec:
    valid_pct: float = 0.1
    n_folds: int | None = None
    fold: int | None = None
    full: bool = False
    seed: int = 42

    def __post_init__(self):
        if self.full and (self.n_folds or self.fold is not None):
            raise OptionError("--full trains on everything: it cannot be combined with --n-folds/--fold")
        if self.n_folds is not None:
            if self.n_folds < 2:
                raise OptionError(f"--n-folds must be at least 2, got {self.n_folds}")
            if self.fold is None or not 0 <= self.fold < self.n_folds:
                raise OptionError(f"--fold must be in 0..{self.n_folds - 1} with --n-folds {self.n_folds}, got {self.fold}")
        elif self.fold is not None:
            raise OptionError("--fold needs --n-folds")
        if not self.full and self.n_folds is None and not 0 < self.valid_pct < 1:
            raise OptionError(f"--valid-pct must be between 0 and 1 (exclusive), got {self.valid_pct}")

    @property
    def kind(self) -> str:
        return "full" if self.full else "kfold" if self.n_folds else "holdout"

    def describe(self) -> str:
        if self.full:
            return "full (no validation)"
        if self.n_folds:
            return f"fold {self.fold}/{self.n_folds} (seed {self.seed})"
        return f"holdout {self.valid_pct:.0%} (seed {self.seed})"

    def to_dict(self) -> dict:
        return asdict(self)


def _class_orders(labels: np.ndarray, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.permutation(np.flatnonzero(labels == c)) for c in np.unique(labels)]


def fold_ids(labels: np.ndarray, n_folds: int, seed: int) -> np.ndarray:
    """Fold number of each image: each class is dealt round-robin over the folds."""
    ids = np.empty(len(labels), dtype=np.int64)
    offset = 0
    for idx in _class_orders(labels, seed):
        # rotating the start keeps fold sizes within one image of each other overall
        ids[idx] = (np.arange(len(idx)) + offset) % n_folds
        offset += len(idx)
    return ids


def split_indices(labels: np.ndarray, spec: SplitSpec) -> tuple[np.ndarray, np.ndarray]:
    """(train, valid) index arrays, each sorted; valid is empty with `full`."""
    labels = np.asarray(labels)
    n = len(labels)
    if spec.full:
        return np.arange(n), np.arange(0)
    if spec.n_folds:
        ids = fold_ids(labels, spec.n_folds, spec.seed)
        return np.flatnonzero(ids != spec.fold), np.flatnonzero(ids == spec.fold)
    valid = np.concatenate([idx[: int(round(len(idx) * spec.valid_pct))] for idx in _class_orders(labels, spec.seed)])
    mask = np.zeros(n, dtype=bool)
    mask[valid] = True
    return np.flatnonzero(~mask), np.flatnonzero(mask)
