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
    from ..runs.paths import reference_default, run_path

    if push_to and fmt != "hub":
        raise OptionError("--push uploads a hub folder: add --format hub")
    if str(out_file) == "-":  # stdout takes text outputs only
        raise OptionError(f"--out -: export writes {'a folder' if fmt == 'hub' else 'a binary file'}; give a path")
    # the shipped default travels with the TTA settings it was chosen with (reference/default.json), which
    # the ONNX runtime then predicts with; any other runs carry their own (`train --tta`, the toolkit's by default)
    paths = [run_path(r, models_dir).resolve() for r in run_names]
    ref = reference_default()
    tta = ref["tta"] if sorted(paths) == sorted(p.resolve() for p in ref["paths"]) else None
    members = [load_run(p, cpu=True, tta=tta) for p in paths]
    path = export(members, out_file, fmt)
    out.print(f"wrote {path} ({fmt}, {len(members)} run(s): {', '.join(m.name for m in members)})")
    if push_to:
        push(path, push_to)
        out.print(f"pushed {path} to the Hub repo {push_to}")
