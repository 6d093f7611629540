"""Data-parallel training across processes started by `torchrun` or `accelerate launch`.

`python -m kmnist_fa train ...` under a launcher trains one run across its processes:

- every process builds the same split, normalisation and model from the same seed, so
  their random streams agree; each takes its own slice of every epoch's shuffled
  training order (no overlap; the order is the one a single process would draw), and
  gradients are averaged by torch's `DistributedDataParallel` (gloo on the CPU, NCCL
  on CUDA);
- every process validates on the whole validation set, so the metrics are those of
  the whole set (these validation sets are small next to training);
- only rank 0 touches the run folder (lock, checkpoint, run.json, history): the others
  train with no writer, and read the checkpoint when the run is resumed;
- the batch size is per process, so the effective batch is `bs x world size`; the
  learning rate is used as given (rule "fixed"): one-cycle's schedule copes with the
  larger batch for these small models, and scaling it is left to the user (`--lr`).
"""
from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import torch
import torch.distributed as dist
from fastai.callback.core import Callback
from fastai.torch_core import num_distrib, rank_distrib
from torch.nn.parallel import DistributedDataParallel

LR_RULE = "fixed"


def is_writer() -> bool:
    """Rank 0 (or no launcher): the one process that touches the run folder."""
    return rank_distrib() == 0


@contextlib.contextmanager
def process_group(cuda: bool) -> Iterator[None]:
    """Join the launcher's process group for the length of a run (nothing to do outside a launcher)."""
    if num_distrib() <= 1 or dist.is_initialized():
        yield
        return
    if cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    dist.init_process_group("nccl" if cuda else "gloo")
    try:
        yield
    finally:
        dist.destroy_process_group()


class DDPTrainer(Callback):
    """Wrap the model in `DistributedDataParallel` and give each process its slice of the training data."""

    order = -5  # before the training loop touches model or data

    def before_fit(self):
        self.rank, self.size = rank_distrib(), num_distrib()
        self.plain = self.learn.model
        dev = next(self.plain.parameters()).device
        self.learn.model = DistributedDataParallel(self.plain, device_ids=[dev.index] if dev.type == "cuda" else None)
        self.dls.train.shard = (self.rank, self.size)

    def after_fit(self):
        self.learn.model = self.plain
        self.dls.train.shard = None


def unwrap(model):
    """The model inside `DistributedDataParallel` (what checkpoints and model.pth hold)."""
    return model.module if isinstance(model, DistributedDataParallel) else model


def process_info(bs: int) -> dict:
    """What run.json records about the processes a run was trained on."""
    size = num_distrib()
    return {"world_size": size, "batch_per_process": bs, "effective_batch": bs * size, "lr_rule": LR_RULE}
