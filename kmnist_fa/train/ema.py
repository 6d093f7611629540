"""Weight averaging: an exponential moving average (EMA) of the weights, as a fastai callback.

On 6,000 images the last steps of a run still move the weights by more than the
noise between folds; averaging them over the last few hundred steps is nearly free
(one lerp per tensor per step) and is what gets evaluated, saved and shipped. The
average is torch's own `AveragedModel` over parameters *and* batch-norm buffers
(`use_buffers=True`), so no extra pass over the data is needed to refresh BN
statistics, unlike SWA. Its decay warms up as in TensorFlow's and timm's EMA,
min(decay, (1 + t) / (10 + t)) at step t: with a fixed 0.99 a one-epoch run of 20
steps would still be 80% its random initialisation (measured: chance accuracy).

Each epoch: train the raw weights (the average follows every optimiser step), then
swap the average in for validation and for the run's commit (`RunRecorder` saves it
as the model, and keeps the raw weights and the average in the checkpoint so a
resumed run continues both exactly), then swap the raw weights back to train on.
"""
from __future__ import annotations

import torch
from fastai.callback.core import Callback
from torch.optim.swa_utils import AveragedModel

from .ddp import unwrap


def warmup_ema(decay: float):
    """`AveragedModel`'s multi_avg_fn for an EMA whose decay warms up over the first steps."""

    def update(averaged: list[torch.Tensor], current: list[torch.Tensor], n_averaged: torch.Tensor) -> None:
        n = int(n_averaged)
        weight = 1 - min(decay, (1 + n) / (10 + n))
        for a, c in zip(averaged, current):
            if a.is_floating_point():
                a.lerp_(c, weight)
            else:  # BN's num_batches_tracked: a count, not an average
                a.copy_(c)

    return update


class WeightEMA(Callback):
    """Validate and save an EMA of the weights; `state` continues the average of a resumed run."""

    order = 60  # after RunRecorder (55): the epoch is committed with the average in place

    def __init__(self, decay: float, state: dict | None = None):
        self.decay, self.state, self.avg, self.raw = decay, state, None, None

    def before_fit(self):
        if self.avg is not None:  # fine-tuning's second fit continues the same average
            return
        self.avg = AveragedModel(unwrap(self.learn.model), multi_avg_fn=warmup_ema(self.decay),
                                 use_buffers=True)
        if self.state is not None:
            self.avg.load_state_dict(self.state)
            self.state = None

    def after_step(self):
        self.avg.update_parameters(unwrap(self.learn.model))

    def after_train(self):
        model = unwrap(self.learn.model)
        self.raw = {k: v.detach().clone() for k, v in model.state_dict().items()}
        model.load_state_dict(self.avg.module.state_dict())

    def after_epoch(self):
        if self.raw is not None:
            unwrap(self.learn.model).load_state_dict(self.raw)
            self.raw = None

    def raw_state(self) -> dict[str, torch.Tensor]:
        """The weights being trained (while the average is swapped in): what a resume continues from."""
        return self.raw if self.raw is not None else unwrap(self.learn.model).state_dict()

    def avg_state(self) -> dict[str, torch.Tensor]:
        return self.avg.state_dict()
