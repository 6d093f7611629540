"""The torch-free runtime: exported ONNX models with numpy, Pillow and onnxruntime alone.

A deployment that cannot carry torch installs just those (docs/export-deploy.md) and gets

* the Python API, `classify` and `OnnxClassifier` (from `kmnist_fa.infer.runtime`), and
* `python -m kmnist_fa.runtime INPUT... --model X.onnx`, which is also what `kmnist-fa predict`
  runs where the full install is missing: the same readers, framing, CSV bytes and `--json`
  rows as `predict`, printed without rich.

Nothing here may import torch, fastai, typer, rich or matplotlib (setup.cfg's import-linter
contract "runtime" checks it).
"""
from __future__ import annotations

import argparse
import json
import sys

from .config.options import OPTIONS, SEED_MAX
from .core.atomic import stdout_taken
from .core.errors import KmnistError, OptionError
from .core.predictions import (
    TABLE_COLUMNS,
    describe,
    prediction_rows,
    printable,
    table_rows,
    used,
    write_probs,
    write_submission,
)
from .data.images import INVERT_MODES, collect_inputs
from .infer.runtime import OnnxClassifier, classify, onnx_model

__all__ = ["OnnxClassifier", "classify", "main"]

FULL_INSTALL = "pip install kmnist-fa"


def _parser(prog: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description="Predict classes for images with an exported ONNX model "
                                "(no torch): `kmnist-fa predict --model X.onnx` without the full install.")
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="MNIST-format images file (idx/npz), dataset name or "
                   "folder (its test split), folder of images, or image files.")
    p.add_argument("--model", "-m", action="append", metavar="FILE.onnx",
                   help="An ONNX file written by `kmnist-fa export`.")
    p.add_argument("--tta", action=argparse.BooleanOptionalAction, default=None,
                   help="Test-time augmentation (default: the exported run's own setting).")
    p.add_argument("--tta-n", type=int, default=None, help="Augmented passes with --tta, plus the clean pass "
                   "(default: the exported run's own setting).")
    p.add_argument("--seed", type=int, default=42, help=f"Seed for TTA's random augmentations (0 to {SEED_MAX:,}: "
                   "numpy's limit): the same inputs, model, options and seed give a byte-identical CSV.")
    p.add_argument("--invert", default="auto", choices=INVERT_MODES, help="Image files: invert dark-on-light "
                   "drawings (auto: decide from the border; yes; no).")
    p.add_argument("--out", help="Write the Kaggle submission (Id,Category) here; `-`: to stdout.")
    p.add_argument("--probs", help="Also write per-class probabilities (`-`: to stdout).")
    p.add_argument("--json", action="store_true", help="Machine-readable output (JSON on stdout) instead of a table.")
    return p


def main(argv: list[str] | None = None, prog: str = "python -m kmnist_fa.runtime") -> int:
    """Run the command line on `argv` (default: sys.argv's); returns the exit code: 0, 1 when some inputs
    could not be read, 2 for a user error (one line on stderr)."""
    args = _parser(prog).parse_args(argv)
    try:
        return _predict(args)
    except KmnistError as e:
        print(f"error: {printable(e)}", file=sys.stderr)
        return 2


def _predict(args: argparse.Namespace) -> int:
    OPTIONS["seed"].check(args.seed)  # here, not by argparse, whose errors are a usage and an error line
    say = sys.stderr if stdout_taken({"--out": args.out, "--probs": args.probs}, args.json) else sys.stdout
    model = onnx_model(args.model)
    if model is None:
        runs = f"--model {args.model[0]}: runs" if args.model else "without --model FILE.onnx, predict uses the shipped runs, which"
        raise OptionError(f"{runs} need the full install ({FULL_INSTALL}); this one predicts with an ONNX file "
                          "from `kmnist-fa export`")
    clf = OnnxClassifier(model)
    s = clf.settings(args.tta, args.tta_n)
    got = collect_inputs(args.inputs, args.invert)
    for e in got.errors:
        print(f"warning: {printable(e)}", file=sys.stderr)
    if len(got.images) == 0:
        raise OptionError("INPUT: no readable images")
    probs = clf.predict_probs(got.images, tta=s.on, n=s.n, seed=args.seed)
    u = used([m["name"] for m in clf.members], s.on, s.n, s.beta, s.method, args.seed, clf.name)
    if args.out:
        write_submission(args.out, got.ids, probs)
        print(printable(f"wrote {args.out} ({len(got.ids):,} rows; {describe(u)})"), file=say)
    if args.probs:
        write_probs(args.probs, got.ids, probs, clf.classes)
        print(printable(f"wrote {args.probs}"), file=say)
    if args.json:
        print(json.dumps({"used": u, "rows": prediction_rows(got.ids, probs, clf.classes, clf.chars)},
                         ensure_ascii=False, indent=2))
    elif not args.out and not args.probs:
        print(printable(f"predictions ({len(got.ids):,} images; {describe(u)})"))
        cells = [TABLE_COLUMNS, *([printable(c) for c in row] for row in table_rows(got.ids, probs, clf.classes,
                                                                                    clf.chars))]
        widths = [max(len(row[k]) for row in cells) for k in range(len(TABLE_COLUMNS))]
        for row in cells:
            print("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip())
    return 1 if got.errors else 0


if __name__ == "__main__":
    sys.exit(main())
