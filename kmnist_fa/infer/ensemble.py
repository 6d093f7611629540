"""Ensembles of runs: combining probabilities and agreement analysis (their CSVs: `core.predictions`).

`mean` averages the members' probability distributions (the report's pdf
averaging); `vote` takes the majority class with ties broken at random by a seeded
generator (the report's rule), and reports each class's share of the votes as its
"probability".
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from ..config.options import ENSEMBLE_METHODS, TTA_N
from ..core.errors import OptionError
from ..core.plots import plt, save_fig
from ..core.predictions import write_probs as write_probs  # re-exported: the notebooks import them from here
from ..core.predictions import write_submission as write_submission
from .predict import TTA_SEED, predict_probs, validation_set

METHODS = ENSEMBLE_METHODS


def combine(probs: Sequence[torch.Tensor], method: str = "mean", seed: int = 42) -> torch.Tensor:
    """N x C ensemble distribution from a list of members' N x C distributions."""
    if method not in METHODS:
        raise OptionError(f"--method must be one of {', '.join(METHODS)}, got {method!r}")
    stack = torch.stack([p.float() for p in probs])
    if method == "mean":
        return stack.mean(0)
    n_models, n, c = stack.shape
    votes = torch.zeros(n, c)
    votes.scatter_add_(1, stack.argmax(2).T, torch.ones(n, n_models))
    # a tiny seeded random bonus, smaller than one vote, picks among tied classes only
    gen = torch.Generator().manual_seed(seed)
    jitter = torch.rand(n, c, generator=gen) * 0.5
    winners = (votes + jitter * (votes == votes.max(1, keepdim=True).values)).argmax(1)
    shares = votes / n_models
    # the winner must be the argmax of what we return, even when it won a tie
    shares[torch.arange(n), winners] += 1e-6
    return shares / shares.sum(1, keepdim=True)


def agreement(preds: Sequence[torch.Tensor]) -> np.ndarray:
    """Pairwise disagreement: fraction of images on which two members' classes differ."""
    cls = [p.argmax(1) for p in preds]
    k = len(cls)
    out = np.zeros((k, k))
    for i in range(k):
        for j in range(k):
            out[i, j] = float((cls[i] != cls[j]).float().mean()) if len(cls[i]) else 0.0
    return out


# --------------------------------------------------------------------------- members

def check_members(members) -> list[str]:
    """Members must predict the same classes in the same order; returns those classes."""
    classes = members[0].classes
    for m in members[1:]:
        if m.classes != classes:
            raise OptionError(f"--model {m.name}: its classes {m.classes[:4]}... differ from {members[0].name}'s "
                              f"{classes[:4]}...; an ensemble needs members trained on the same classes")
    return classes


def member_probs(members, images: np.ndarray, tta: bool = False, n: int = TTA_N,
                 seed: int | None = None) -> list[torch.Tensor]:
    """Each member's probabilities; with TTA, every member's passes are drawn from `seed` (default TTA_SEED)."""

    return [predict_probs(m, images, tta=tta, n=n, seed=TTA_SEED if seed is None else seed) for m in members]


def shared_split(members) -> bool:
    """Whether all members were validated on the same images (same data and split)."""
    keys = {(m.record.data.fingerprint, m.split()) for m in members}
    return len(keys) == 1 and not members[0].split().full


def accuracy(probs: torch.Tensor, labels: np.ndarray | None) -> float | None:
    if labels is None or len(labels) == 0:
        return None
    return float((probs.argmax(1).numpy() == np.asarray(labels)).mean())


def analyse(members, data, images: np.ndarray, labels: np.ndarray | None, method: str = "mean",
            tta: bool = False, n: int = TTA_N, seed: int = 42) -> dict:
    """The report's Figure 2 as data: per member and for the ensemble, validation accuracy
    (on the validation split they share), input-set accuracy when labels exist, and
    agreement with the ensemble; plus pairwise disagreement on the input images."""

    check_members(members)
    notes: list[str] = []
    shared = shared_split(members)
    valid_acc: list[float | None] = []
    ens_valid = None
    if shared:
        vx, vy, n0 = validation_set(members[0], data)
        notes += n0
        vprobs = member_probs(members, vx, tta, n, seed)
        valid_acc = [accuracy(p, vy) for p in vprobs]
        ens_valid = accuracy(combine(vprobs, method, seed), vy)
    else:
        notes.append("members do not share a validation split: each shows its own, and the ensemble has none")
        for m in members:
            vx, vy, nm = validation_set(m, data)
            notes += nm
            valid_acc.append(accuracy(member_probs([m], vx, tta, n, seed)[0], vy))
    probs = member_probs(members, images, tta, n, seed)
    ens = combine(probs, method, seed)
    ens_cls = ens.argmax(1)
    rows = []
    for m, p, va in zip(members, probs, valid_acc):
        rows.append({"name": m.name, "arch": m.record.arch, "valid_acc": va, "test_acc": accuracy(p, labels),
                     "agreement": float((p.argmax(1) == ens_cls).float().mean()) if len(ens_cls) else None})
    rows.append({"name": f"ensemble ({method}{', TTA' if tta else ''})", "arch": "", "valid_acc": ens_valid,
                 "test_acc": accuracy(ens, labels), "agreement": 1.0 if len(ens_cls) else None})
    return {"rows": rows, "probs": ens, "member_probs": probs, "disagreement": agreement(probs),
            "names": [m.name for m in members], "notes": notes, "shared_split": shared}


def disagreement_heatmap(path: str | Path, names: Sequence[str], matrix: np.ndarray) -> Path:
    k = len(names)
    fig, ax = plt.subplots(figsize=(1.2 + 0.9 * k, 1.0 + 0.8 * k))
    im = ax.imshow(matrix, cmap="viridis", vmin=0)
    ax.set_xticks(range(k), names, rotation=45, ha="right")
    ax.set_yticks(range(k), names)
    for i in range(k):
        for j in range(k):
            light = matrix[i, j] < matrix.max() / 2
            ax.text(j, i, f"{matrix[i, j]:.1%}", ha="center", va="center", color="w" if light else "k", fontsize=8)
    ax.set_title("pairwise disagreement")
    fig.colorbar(im, ax=ax, fraction=0.046)
    return save_fig(fig, path)
