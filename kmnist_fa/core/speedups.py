"""The only place kmnist-fa touches private fastai/torch names, each with a public fallback.

Two patches, each kept because `benchmarks/bench.py --tables patches` measured it
saving at least 5% of a shipped default recipe's training time (docs/benchmarks.md, "Private-API
patches"): per-batch callback dispatch (`HandlerDispatchLearner`, `PER_BATCH_EVENTS`) and batch transforms without
tensor-subclass dispatch (`no_subclass_dispatch`). If an upgrade renames what they
touch, the fallback keeps results identical (tested) and only the speed-up is lost.
"""
from __future__ import annotations

import contextlib

import torch
from fastai.learner import Learner

try:  # the events fastai fires per batch; ToolkitLearner sends them only to callbacks that handle them
    from fastai.callback.core import _inner_loop as _fastai_inner_loop
except ImportError:  # pragma: no cover
    _fastai_inner_loop = None

FALLBACK_EVENTS = ("before_batch", "after_pred", "after_loss", "before_backward", "after_cancel_backward",
                   "after_backward", "before_step", "after_step", "after_cancel_batch", "after_batch")
PER_BATCH_EVENTS = tuple(_fastai_inner_loop or FALLBACK_EVENTS)


class HandlerDispatchLearner(Learner):
    """fastai's `Learner`, with per-batch events sent only to the callbacks that handle them.

    fastai calls every callback for every event and lets those without a handler do
    nothing: ~35 calls a batch. Events outside the batch loop still reach every
    callback, because `Callback.__call__` does bookkeeping there (it re-arms `run` after
    `after_fit`). Overrides fastai's private `_call_one`: should it be renamed, the
    override goes unused and dispatch is fastai's own.
    """

    def __call__(self, event_name):
        if isinstance(event_name, str):
            return self._call_one(event_name)
        return super().__call__(event_name)

    def _call_one(self, event_name):
        if event_name not in PER_BATCH_EVENTS:
            return super()._call_one(event_name)
        handlers = self.__dict__.setdefault("_handlers", {})
        if event_name not in handlers:
            handlers[event_name] = [cb for cb in self.cbs.sorted("order") if hasattr(cb, event_name)]
        for cb in handlers[event_name]:
            cb(event_name)

    def add_cb(self, cb):
        self.__dict__.pop("_handlers", None)
        return super().add_cb(cb)

    def remove_cb(self, cb):
        self.__dict__.pop("_handlers", None)
        return super().remove_cb(cb)


def no_subclass_dispatch():
    """Run torch ops on fastai's tensor subclasses without their Python `__torch_function__`
    (same values, less time: see docs/benchmarks.md); a no-op where torch lacks the switch."""
    switch = getattr(getattr(torch, "_C", None), "DisableTorchFunctionSubclass", None)
    return switch() if switch is not None else contextlib.nullcontext()
