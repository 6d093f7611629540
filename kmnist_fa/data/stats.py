"""Pixel statistics of a uint8 image array, in numpy alone.

Kept apart from `pipeline` so `kmnist-fa data info` reports the very numbers training
normalises with without loading torch or fastai (tests/test_startup.py checks it).
"""
from __future__ import annotations

import math

import numpy as np

from ..core.errors import DataError


def image_stats(images: np.ndarray, chunk: int = 4096) -> tuple[float, float]:
    """Mean and std of uint8 pixel values scaled to [0, 1], from exact integer sums.

    Summed a chunk at a time in int64 and combined as Python integers, so the result
    is exact up to the final division for any number of images, without the float64
    copy of the whole array (376 MB for 60,000 images, and std wants a second one).
    """
    if images.size == 0:
        raise DataError("no images to compute normalisation statistics from")
    n, total, squares = images.size, 0, 0
    for i in range(0, len(images), chunk):
        c = images[i:i + chunk].astype(np.int64)
        total, squares = total + int(c.sum()), squares + int((c * c).sum())
    var = (squares * n - total * total) / (n * n * 255 * 255)
    if var <= 0:  # normalising would divide by zero and turn every prediction into NaN
        raise DataError(f"all {len(images):,} training images have the same pixel value everywhere; "
                        "nothing to learn or normalise")
    return total / (n * 255), math.sqrt(var)
