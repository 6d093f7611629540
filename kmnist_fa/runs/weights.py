"""Weights on disk: tensor-only files, loaded with `torch.load(weights_only=True)` so no code is ever unpickled.

torch is imported inside the functions: the run record and listings need no torch.
"""
from __future__ import annotations

from pathlib import Path

from ..core.atomic import write_with
from ..core.errors import RunError
from ..core.files import check_input


def cpu_state(model) -> dict:
    """A snapshot of a module's state_dict (or of a state_dict) on the CPU (a run trained on a GPU loads anywhere).

    Always a copy: on the CPU `.cpu()` would return the live parameters, and a
    snapshot kept for later (the best epoch's weights) would keep training.
    """
    state = model if isinstance(model, dict) else model.state_dict()
    return {k: v.detach().to("cpu", copy=True) for k, v in state.items()}


def load_state(file: str | Path, device="cpu") -> dict:
    """A tensor-only file via `weights_only=True`; corruption becomes a one-line RunError."""
    import torch

    file = Path(file)
    if not file.exists():
        raise RunError(f"{file}: missing")
    check_input(file, RunError)  # a FIFO or device would hang torch.load or feed it forever
    try:
        return torch.load(file, map_location=device, weights_only=True)
    except Exception as e:  # torch raises many types for truncated/garbage files
        raise RunError(f"{file}: corrupt or not a weights-only state file ({type(e).__name__}: "
                       f"{str(e).splitlines()[0][:120] if str(e) else ''})") from None


def save_state(path: str | Path, obj) -> Path:
    """Write tensors (a state_dict, a checkpoint of plain containers) atomically, loadable by `load_state`."""
    import torch

    return write_with(path, lambda p: torch.save(obj, p))
