"""`kmnist-fa export`: ONNX, TorchScript, safetensors and Hub folders."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ..core.errors import OptionError
from .common import ModelsDirOpt, app, friendly, out


@app.command("export")
@friendly
def export_cmd(run_names: list[str] = typer.Argument(..., metavar="RUN...", help="Run(s) to export; several "
                                                    "become one graph averaging their probabilities."),
               out_file: Path = typer.Option(..., "--out", help="File to write (e.g. model.onnx)."),
               fmt: str = typer.Option("onnx", "--format", help="onnx (portable; `predict --model FILE.onnx` "
                                       "runs it without torch), torchscript, safetensors (one run's weights), "
                                       "hub (a folder: config.json, model.safetensors, model card)."),
               push_to: Optional[str] = typer.Option(None, "--push", help="With --format hub: upload the folder to "
                                                     "this Hugging Face Hub repo id (needs a token and the network)."),
               models_dir: Optional[Path] = ModelsDirOpt):
    """Export runs with their normalisation built in: raw [0, 255] images in, logits and probabilities out."""
    try:
        from ..infer.export import export, push
    except ImportError as e:
        raise OptionError(f'export needs the export extra: pip install "kmnist-fa[export]" ({e.name} missing)') from None
    from ..infer.predict import load_run

    if push_to and fmt != "hub":
        raise OptionError("--push uploads a hub folder: add --format hub")
    members = [load_run(r, models_dir, cpu=True) for r in run_names]
    path = export(members, out_file, fmt)
    out.print(f"wrote {path} ({fmt}, {len(members)} run(s): {', '.join(m.name for m in members)})")
    if push_to:
        push(path, push_to)
        out.print(f"pushed {path} to the Hub repo {push_to}")
