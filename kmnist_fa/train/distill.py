"""Knowledge distillation (`--teacher RUN...`): a model also learns the teachers' soft targets.

Online, as a fastai callback: every training batch, exactly as augmented for the
student, goes through the teachers too, and the loss becomes

    (1 - w) * loss(labels) + w * T² * KL(mean_t softmax(teacher_t / T) || softmax(student / T))

(Hinton et al. 2015; T² keeps the soft term's gradient scale independent of T). So a
single fast model learns an ensemble's "dark knowledge" on every random view of every
image, including self-training's pseudo-labelled ones (`--pseudo`), instead of one
frozen soft label per image. Validation loss and metrics stay those of the labels.

Teachers are loaded and checked by `pipelines.teachers` on the same grounds as
self-training's: for an honest validation they must never have seen this run's
validation images. Each
teacher keeps its own normalisation, so the batch is mapped from the student's scale to
the teacher's. run.json records a digest of each teacher's weights, and a resume with
changed teachers is refused.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from fastai.callback.core import Callback


@dataclass
class Teacher:
    name: str
    model: torch.nn.Module
    mean: float
    std: float
    digest: str


def weights_digest(model: torch.nn.Module) -> str:
    """sha256 over the state_dict's names and tensor bytes: the same weights, whatever file format held them."""
    h = hashlib.sha256()
    for k, v in model.state_dict().items():
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def teacher_info(teachers: list[Teacher], weight: float, temp: float) -> dict:
    """What run.json keeps of the teachers, and what a resume must find again."""
    return {"teachers": [{"name": t.name, "weights": t.digest} for t in teachers], "weight": weight,
            "temp": temp, "targets": "soft (online, same augmented batch)"}


class Distill(Callback):
    """Adds the soft-target term to every training batch's loss (validation is left to the labels)."""

    order = 20  # after MixedPrecision's after_loss has closed autocast: the teachers' targets are fp32

    def __init__(self, teachers: list[Teacher], weight: float, temp: float, mean: float, std: float):
        self.teachers, self.weight, self.temp, self.mean, self.std = teachers, weight, temp, mean, std

    def soft_targets(self, x: torch.Tensor) -> torch.Tensor:
        raw = x.float() * self.std + self.mean  # back to [0, 1] pixels, then onto each teacher's scale
        with torch.no_grad():
            return torch.stack([F.softmax(t.model((raw - t.mean) / t.std).float() / self.temp, 1)
                                for t in self.teachers]).mean(0)

    def after_loss(self):
        if not self.training:
            return
        target = self.soft_targets(self.xb[0])
        log_q = F.log_softmax(self.pred.float() / self.temp, 1)
        kd = F.kl_div(log_q, target, reduction="batchmean") * self.temp ** 2
        self.learn.loss_grad = (1 - self.weight) * self.loss_grad + self.weight * kd
        self.learn.loss = self.learn.loss_grad.clone()
