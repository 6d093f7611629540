"""The only place kmnist-fa touches private fastai/torch names, each with a public fallback.

Each is kept because bench.py measured it paying (README, "Speed against hand-written
PyTorch"); if an upgrade renames it, the fallback keeps results identical and only the
speed-up is lost.
"""
from __future__ import annotations

import contextlib
import warnings

import torch

with warnings.catch_warnings():
    warnings.simplefilter("ignore", FutureWarning)
    try:  # the events fastai fires per batch; ToolkitLearner sends them only to callbacks that handle them
        from fastai.callback.core import _inner_loop as _fastai_inner_loop
    except ImportError:  # pragma: no cover
        _fastai_inner_loop = None

FALLBACK_EVENTS = ("before_batch", "after_pred", "after_loss", "before_backward", "after_cancel_backward",
                   "after_backward", "before_step", "after_step", "after_cancel_batch", "after_batch")
PER_BATCH_EVENTS = tuple(_fastai_inner_loop or FALLBACK_EVENTS)


def no_subclass_dispatch():
    """Run torch ops on fastai's tensor subclasses without their Python `__torch_function__`
    (heavy-preset batches ~0.7x the time, same values); a no-op where torch lacks the switch."""
    switch = getattr(getattr(torch, "_C", None), "DisableTorchFunctionSubclass", None)
    return switch() if switch is not None else contextlib.nullcontext()
