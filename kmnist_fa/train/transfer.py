"""Transfer learning: start a run from another run's weights (or any state_dict file).

Every registered model is `nn.Sequential(body, head)`. The body is always taken from
the parent; the head too when the class count matches, and is built fresh when it does
not (Fashion-MNIST or K49 -> KMNIST). Training then follows fastai's `fine_tune`:
the body frozen for `freeze_epochs`, then everything unfrozen with discriminative
learning rates (the body at lr/lr_mult, the head at lr; lr_mult 100 as in fastai).
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from .. import runs
from ..core.errors import OptionError, RunError
from ..data.datasets import md5sum
from ..models.registry import create_model
from ..runs.record import Parent


def _source(src: str, root) -> tuple[dict, Parent]:
    """(state_dict, parent description) for --from RUN or --from file.pth."""
    p = Path(src)
    if p.is_file():
        state = runs.load_state(p)
        if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
            raise RunError(f"--from {p}: not a plain state_dict (a dict of tensors)")
        return state, Parent("state_dict", str(p.resolve()), md5sum(p))
    path = runs.run_path(src, root)
    rec = runs.RunRecord.read(path)
    weights = path / runs.MODEL_FILE
    state = runs.load_state(weights)
    return state, Parent("run", str(path.resolve()), md5sum(weights), name=rec.name, arch=rec.arch,
                         dataset=rec.data.name, data_fingerprint=rec.data.fingerprint, classes=rec.classes,
                         parent=rec.parent)


def init_from(src: str, arch: str, n_classes: int, bn, dropout, partial: bool = False,
              root=None) -> tuple[nn.Module, Parent]:
    """A fresh model for `arch` with the parent's weights loaded where they fit."""
    state, parent = _source(src, root)
    if parent.kind == "run" and parent.arch != arch:
        raise OptionError(f"--from {src}: that run is a {parent.arch}, not a {arch}; transfer needs the same "
                          "architecture (use --from FILE.pth --partial to load what fits)")
    model = create_model(arch, n_classes, bn, dropout)
    own = model.state_dict()
    head_keys = {f"1.{k}" for k in model[1].state_dict()}
    same_classes = parent.classes is None or len(parent.classes) == n_classes
    if parent.kind == "run" and not same_classes:
        state = {k: v for k, v in state.items() if k not in head_keys}
    bad = sorted(k for k, v in state.items() if k not in own or own[k].shape != v.shape)
    missing = sorted(k for k in own if k not in state and not (parent.kind == "run" and k in head_keys))
    if (bad or missing) and not partial:
        detail = "; ".join([f"{k}: {tuple(state[k].shape)} vs {tuple(own[k].shape)}" if k in own else f"{k}: unexpected"
                            for k in bad[:4]] + [f"{k}: missing" for k in missing[:4]])
        raise RunError(f"--from {src}: {len(bad) + len(missing)} layers do not fit {arch} ({detail}); "
                       "--partial loads the rest and skips these")
    load = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    model.load_state_dict(load, strict=False)
    parent.loaded = len(load)
    parent.skipped = bad + missing
    parent.head = "kept" if all(k in load for k in head_keys) else "re-created"
    return model, parent
