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

import json
import warnings
from pathlib import Path

import torch
from torch import nn

from ..config.shown import shown_options
from ..core.atomic import write_json, write_text, write_with
from ..core.errors import OptionError
from ..core.secrets import redact
from ..data.datasets import md5sum
from ..runs.paths import HUB_CONFIG, HUB_WEIGHTS, MODEL_FILE, is_hub_folder
from .ensemble import check_members
from .predict import LoadedRun

FORMATS = ("onnx", "torchscript", "safetensors", "hub")
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
                                          m.record.data.fingerprint, "weights_md5": md5sum(_weights(m.path))}
                                         for m in members]),
        "kmnist_fa.input": "float32 images in [0, 255], N x 28 x 28, white ink on black (kmnist_fa.infer.runtime "
                           "converts uint8 and N x 1 x 28 x 28)",
        "kmnist_fa.outputs": "logits, probs" + (" (probs: mean of the members')" if len(members) > 1 else ""),
        "kmnist_fa.tta": json.dumps(first.tta.to_json()),  # what the runtime's TTA blends with (clean-pass weight)
    }


def _weights(path: Path) -> Path:
    return path / (HUB_WEIGHTS if is_hub_folder(path) else MODEL_FILE)


def bundle(members: list[LoadedRun]) -> Preprocessed:
    check_members(members)
    models = [m.learn.model.cpu().eval() for m in members]
    return Preprocessed(models, [m.record.norm.mean for m in members], [m.record.norm.std for m in members]).eval()


def export(members: list[LoadedRun], out: str | Path, fmt: str = "onnx") -> Path:
    """Write `members` (one run, or an ensemble) to `out` in format `fmt`."""
    if fmt not in FORMATS:
        raise OptionError(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    if fmt == "hub":
        if len(members) > 1:
            raise OptionError("--format hub holds one run; export an ensemble as onnx or torchscript")
        return export_hub(members[0], Path(out))
    model, meta = bundle(members), metadata(members)
    example = torch.zeros(2, 28, 28)
    if fmt == "onnx":
        return write_with(out, lambda p: _onnx(model, example, meta, p))
    if fmt == "torchscript":
        with warnings.catch_warnings():  # torch >= 2.10 deprecates TorchScript, the format asked for: not news
            warnings.simplefilter("ignore", FutureWarning)
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


# --------------------------------------------------------------------------- Hugging Face Hub-style folders

KMNIST_ATTRIBUTION = ('"KMNIST Dataset" (created by CODH), adapted from "Kuzushiji Dataset" (created by NIJL and '
                      'others), doi:10.20676/00000341, licensed CC BY-SA 4.0')


def export_hub(run: LoadedRun, out: Path) -> Path:
    """A folder in huggingface_hub's layout: `config.json` (how to build the model, plus the whole run
    record), `model.safetensors` (the state_dict, no pickle) and `README.md` (the model card).

    `kmnist-fa predict/ensemble/serve --model FOLDER` and `load_run(FOLDER)` read it back.
    """
    from safetensors.torch import save_file

    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise OptionError(f"--out {out}: exists and is not an empty folder")
    rec, m = run.record, run.record.config.model
    state = {k: v.detach().cpu().contiguous() for k, v in run.learn.model.state_dict().items()}
    write_with(out / HUB_WEIGHTS, lambda p: save_file(state, str(p), metadata=metadata([run])))
    write_json(out / HUB_CONFIG, {"model_type": "kmnist-fa", "arch": m.arch, "n_classes": len(rec.classes),
                                  "bn": m.bn, "dropout": m.dropout, "run": rec.to_json()})
    write_text(out / "README.md", model_card(run))
    return out


def model_card(run: LoadedRun) -> str:
    """The Hub model card: data and its licence, recipe, metrics and how they were measured, use and limits."""
    rec = run.record
    kuzushiji = rec.data.name.lower().startswith(("kmnist", "k49"))
    b, s = rec.best, rec.config.split
    if s.full or b is None or b.accuracy is None:
        metric = "No validation accuracy: the run trained on every labelled image (`--full`)."
    else:
        metric = (f"Validation accuracy {b.accuracy:.4f} at epoch {b.epoch} of {rec.epochs_done}, on the run's "
                  f"own {s.describe()} split of {rec.split.n_valid:,} labelled images (no TTA).")
    options = "\n".join(f"| `{k}` | `{v}` |" for k, v in shown_options(rec.config).items())
    classes = ", ".join(rec.label(i) for i in range(len(rec.classes)))
    return f"""---
license: {"cc-by-sa-4.0" if kuzushiji else "other"}
library_name: pytorch
tags: [image-classification, fastai, kmnist-fa{", kmnist" if kuzushiji else ""}]
---
# {rec.name}: {rec.arch} trained on {rec.data.name}

A {rec.arch} ({rec.n_params:,} parameters) exported by kmnist-fa {rec.versions.get("kmnist_fa", "")}. It classifies
28x28 grayscale images, white ink on black, into {len(rec.classes)} classes: {classes}.

## Use

```bash
kmnist-fa predict char.png --model THIS_FOLDER
```

`config.json` says how to build the model (`arch`, `n_classes`, `bn`, `dropout`) and holds the full training
record under `run`; `model.safetensors` is the state_dict. Inputs are normalised with mean {rec.norm.mean:.6f}
and std {rec.norm.std:.6f} of pixel values scaled to [0, 1].

## Training

{rec.split.n_train:,} images of `{rec.data.name}` (data fingerprint `{rec.data.fingerprint}`), {rec.epochs_done} epochs,
learning rate {rec.lr:.3g} ({rec.lr_source}), {rec.wall_time_s:.0f} s on {rec.device}. The options that shaped the
run (`config.json` holds them all under `run.config`):

| option | value |
|---|---|
{options}

## Metrics

{metric}

## Limits

Trained only on {rec.data.name}: characters outside its {len(rec.classes)} classes, other scripts, or images not
framed like the MNIST family (28x28, the character centred, white on black) get a confident but meaningless
class. `kmnist-fa predict` frames and inverts ordinary image files first; use it rather than feeding raw pixels.

## Data

{("Data: " + KMNIST_ATTRIBUTION + ".") if kuzushiji else f"Data: {rec.data.name}; see its own licence."}
"""


def push(folder: Path, repo_id: str) -> None:
    """Upload a hub folder with huggingface_hub (needs a token and the network)."""
    try:
        from huggingface_hub import HfApi
    except ImportError:
        raise OptionError('--push needs huggingface_hub: pip install "kmnist-fa[export]"') from None
    try:
        api = HfApi()
        api.create_repo(repo_id, exist_ok=True)
        api.upload_folder(folder_path=str(folder), repo_id=repo_id)
    except Exception as e:  # no token, no network, no permission: huggingface_hub raises many types
        first = redact((str(e).splitlines() or [''])[0])  # its URL may hold a login (HF_ENDPOINT)
        raise OptionError(f"--push {repo_id}: upload failed ({type(e).__name__}: {first[:160]})") from None

