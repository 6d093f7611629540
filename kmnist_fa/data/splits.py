"""Deterministic, stratified train/validation splits over the labelled images.

Stratified because KMNIST-10k has only 600 images a class: a plain random 10%
holdout can be off by a dozen images in a class, which moves per-class recall by
several points. Everything depends on `seed` alone, never on global RNG state.
"""
from __future__ import annotations

import numpy as np

from ..config.options import SplitSpec


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
