"""Export runs to formats other stacks load: ONNX, TorchScript, safetensors.

Every exported model carries its own preprocessing: it takes raw images (uint8 or
float in [0, 255], N x 28 x 28 or N x 1 x 28 x 28, any batch size), scales and
normalises them with the run's statistics, and returns logits and probabilities, so
a deployment never has to know the training set's mean and std. Several runs export
as one graph whose probabilities are the members' mean (logits: their log), as
`kmnist-fa ensemble --method mean` combines them. What a user needs beside the
numbers (class names, characters, architecture, source runs, data fingerprint,
weights MD5) goes into each format's own metadata. Needs the `export` extra.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
from torch import nn

from .atomic import write_with
from .errors import OptionError
from .inference import LoadedRun
from .runs import MODEL_FILE

FORMATS = ("onnx", "torchscript", "safetensors")
OPSET = 18


class Preprocessed(nn.Module):
    """Raw [0, 255] images in, (logits, probabilities) out: the runs' normalisation baked in."""

    def __init__(self, models: list[nn.Module], means: list[float], stds: list[float]):
        super().__init__()
        self.models = nn.ModuleList(models)
        self.register_buffer("mean", torch.tensor(means))
        self.register_buffer("std", torch.tensor(stds))

    def forward(self, images: torch.Tensor):
        x = images.float().reshape(-1, 1, 28, 28) / 255.0
        outs = [m((x - self.mean[i]) / self.std[i]) for i, m in enumerate(self.models)]
        if len(outs) == 1:
            return outs[0], outs[0].softmax(1)
        p = torch.stack([o.softmax(1) for o in outs]).mean(0)
        return p.clamp_min(1e-12).log(), p


def metadata(members: list[LoadedRun]) -> dict[str, str]:
    """String-valued metadata shared by every format (ONNX metadata_props, safetensors header, extra files)."""
    first = members[0]
    return {
        "kmnist_fa.classes": json.dumps(first.classes, ensure_ascii=False),
        "kmnist_fa.chars": json.dumps(first.chars, ensure_ascii=False),
        "kmnist_fa.members": json.dumps([{"name": m.name, "arch": m.record.arch, "data_fingerprint":
                                          m.record.data.fingerprint, "weights_md5": _md5(m.path / MODEL_FILE)}
                                         for m in members]),
        "kmnist_fa.input": "float32 images in [0, 255], N x 28 x 28, white ink on black (kmnist_fa.runtime "
                           "converts uint8 and N x 1 x 28 x 28)",
        "kmnist_fa.outputs": "logits, probs" + (" (probs: mean of the members')" if len(members) > 1 else ""),
    }


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def bundle(members: list[LoadedRun]) -> Preprocessed:
    from .ensemble import check_members

    check_members(members)
    models = [m.learn.model.cpu().eval() for m in members]
    return Preprocessed(models, [m.record.norm.mean for m in members], [m.record.norm.std for m in members]).eval()


def export(members: list[LoadedRun], out: str | Path, fmt: str = "onnx") -> Path:
    """Write `members` (one run, or an ensemble) to `out` in format `fmt`."""
    if fmt not in FORMATS:
        raise OptionError(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    model, meta = bundle(members), metadata(members)
    example = torch.zeros(2, 28, 28)
    if fmt == "onnx":
        return write_with(out, lambda p: _onnx(model, example, meta, p))
    if fmt == "torchscript":
        traced = torch.jit.trace(model, example)
        return write_with(out, lambda p: torch.jit.save(traced, str(p), _extra_files={"kmnist_fa.json":
                                                                                      json.dumps(meta)}))
    if len(members) > 1:
        raise OptionError("--format safetensors holds one run's weights; export an ensemble as onnx or torchscript")
    from safetensors.torch import save_file

    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    return write_with(out, lambda p: save_file(state, str(p), metadata=meta))


def _onnx(model: nn.Module, example: torch.Tensor, meta: dict, path: Path) -> None:
    import onnx

    batch = torch.export.Dim("batch", min=1, max=1 << 20)
    prog = torch.onnx.export(model, (example,), input_names=["images"], output_names=["logits", "probs"],
                             dynamic_shapes=({0: batch},), opset_version=OPSET, dynamo=True, verbose=False)
    proto = prog.model_proto
    for k, v in meta.items():
        proto.metadata_props.add(key=k, value=v)
    onnx.checker.check_model(proto, full_check=True)
    onnx.save(proto, str(path))
